// A real JS Hypercore 11.37.1 peer for corelog's wire-protocol tests and benchmarks.
//
//   node peer.mjs writer --dir D [--cores N] [--blocks N] [--size S] [--listen | --connect PORT]
//   node peer.mjs reader --dir D --key HEX[,HEX...] [--listen | --connect PORT]
//
// Prints one JSON line when ready ({port?, cores: [{key, length, fork, treeHash}]}), then takes
// JSON commands on stdin, one per line, answering each with one JSON line:
//   {"append": [core, n, size?]}  {"truncate": [core, length]}  {"state": core}
//   {"wait": [core, length, fork?, timeoutMs?]}  (a reader: until it holds length blocks at fork)
//   {"tamper": true}  (a writer serving corrupted block values from now on)
//   {"badcap": true}  (before connecting: send a wrong capability)
// Many cores on one connection go through a Corestore (store.replicate).
import Corestore from 'corestore'
import NoiseSecretStream from '@hyperswarm/secret-stream'
import net from 'net'
import readline from 'readline'
import crypto from 'crypto'

const args = process.argv.slice(2)
const mode = args[0]
const opt = (name, dflt) => {
  const i = args.indexOf('--' + name)
  return i === -1 ? dflt : args[i + 1]
}
const flag = (name) => args.includes('--' + name)

const store = new Corestore(opt('dir'))
await store.ready()
const cores = []
if (mode === 'writer') {
  const n = Number(opt('cores', '1'))
  for (let c = 0; c < n; c++) {
    const core = store.get({ name: 'core' + c })
    await core.ready()
    cores.push(core)
    await appendBlocks(core, Number(opt('blocks', '0')), Number(opt('size', '16')), c)
  }
} else {
  for (const k of opt('key').split(',')) {
    const core = store.get({ key: Buffer.from(k, 'hex') })
    await core.ready()
    cores.push(core)
    core.download({ start: 0, end: -1 })
  }
}

let tamper = false
let badcap = false
const errors = []

async function appendBlocks(core, n, size, salt) {
  const batch = []
  for (let i = 0; i < n; i++) {
    const b = Buffer.alloc(size)
    const tag = `${salt}:${core.length + batch.length}:`
    b.write(tag.slice(0, size))
    batch.push(b)
    if (batch.length === 10000) {
      await core.append(batch)
      batch.length = 0
    }
  }
  if (batch.length) await core.append(batch)
}

async function state(core) {
  const hash = core.length && core.contiguousLength === core.length ? (await core.treeHash()).toString('hex') : null
  return { key: core.key.toString('hex'), length: core.length, contiguousLength: core.contiguousLength, fork: core.fork, treeHash: hash }
}

function attach(socket, initiator) {
  const noise = new NoiseSecretStream(initiator, socket)
  noise.on('error', (err) => errors.push(String(err && err.message ? err.message : err)))
  if (badcap) {
    // corrupt the handshake hash the capability is derived from, only on our side
    noise.opened.then(() => { noise.handshakeHash = crypto.randomBytes(64) })
  }
  store.replicate(noise)
  return noise
}


const ready = { cores: await Promise.all(cores.map(state)) }
if (flag('listen')) {
  const server = net.createServer((socket) => attach(socket, false))
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  ready.port = server.address().port
  process.stdout.write(JSON.stringify(ready) + '\n')
} else {
  process.stdout.write(JSON.stringify(ready) + '\n')
}

const rl = readline.createInterface({ input: process.stdin })
for await (const line of rl) {
  if (!line.trim()) continue
  const cmd = JSON.parse(line)
  let out = {}
  try {
    if (cmd.connect) {
      const socket = net.connect(cmd.connect, '127.0.0.1')
      attach(socket, true)
      out = { connected: true }
    } else if (cmd.append) {
      const [c, n, size] = cmd.append
      await appendBlocks(cores[c], n, size || 16, c)
      out = await state(cores[c])
    } else if (cmd.truncate) {
      const [c, len] = cmd.truncate
      await cores[c].truncate(len)
      out = await state(cores[c])
    } else if (cmd.state !== undefined) {
      out = await state(cores[cmd.state])
    } else if (cmd.wait) {
      const [c, len, fork, timeoutMs, pollMs, noHash] = cmd.wait
      const core = cores[c]
      const deadline = Date.now() + (timeoutMs || 20000)
      while (!(core.contiguousLength >= len && core.length === len && (fork === undefined || fork === null || core.fork === fork))) {
        if (Date.now() > deadline) break
        await new Promise((resolve) => setTimeout(resolve, pollMs || 5))
      }
      out = await state(core)
      if (!noHash) out.blocksHash = await blocksHash(core)
    } else if (cmd.blocks !== undefined) {
      out = { blocksHash: await blocksHash(cores[cmd.blocks]) }
    } else if (cmd.tamper) {
      tamper = true
      for (const core of cores) tamperCore(core)
      out = { tamper: true }
    } else if (cmd.badcap) {
      badcap = true
      out = { badcap: true }
    } else if (cmd.errors) {
      out = { errors }
    } else if (cmd.exit) {
      process.stdout.write('{}\n')
      process.exit(0)
    }
  } catch (err) {
    out = { error: String(err && err.message ? err.message : err) }
  }
  process.stdout.write(JSON.stringify(out) + '\n')
}

async function blocksHash(core) {
  const h = crypto.createHash('sha256')
  for (let i = 0; i < core.contiguousLength; i++) h.update(await core.get(i, { wait: false }))
  return h.digest('hex')
}

function tamperCore(core) {
  // from now on every block this writer sends to a new peer has its first byte flipped
  core.on('peer-add', (peer) => {
    const send = peer.wireData.send.bind(peer.wireData)
    peer.wireData.send = (m) => {
      if (m.block && m.block.value) {
        const c = Buffer.from(m.block.value)
        c[0] ^= 0xff
        m = { ...m, block: { ...m.block, value: c } }
      }
      return send(m)
    }
  })
}
