// A plain JS Hypercore reader on Hyperswarm: finds a core by its discovery key and downloads it.
//
//   node examples/hypercore_swarm_reader.mjs --dir DIR --key HEX --length N [--bootstrap host:port]
//
// Prints one JSON line once it holds N blocks: {length, fork, treeHash, blocks: [hex...]}.
import Corestore from 'corestore'
import Hyperswarm from 'hyperswarm'
import DHT from 'hyperdht'

const args = process.argv.slice(2)
const opt = (name, dflt) => {
  const i = args.indexOf('--' + name)
  return i === -1 ? dflt : args[i + 1]
}
const bootstrap = opt('bootstrap')
  ? opt('bootstrap').split(',').map((hp) => ({ host: hp.split(':')[0], port: Number(hp.split(':')[1]) }))
  : null

const store = new Corestore(opt('dir', 'reader-store'))
// on a loopback testnet the DHT node binds 127.0.0.1 and is reachable (not firewalled): otherwise
// peers in other processes time out trying to connect to it
const loopback = bootstrap && bootstrap.every((b) => b.host === '127.0.0.1')
const swarm = new Hyperswarm(
  loopback ? { dht: new DHT({ bootstrap, host: '127.0.0.1', firewalled: false }) } : bootstrap ? { bootstrap } : {}
)
swarm.on('connection', (conn) => {
  if (process.env.DEBUG_SWARM) process.stderr.write('reader: swarm connection\n')
  conn.on('error', (err) => {
    if (process.env.DEBUG_SWARM) process.stderr.write('reader: ' + err.message + '\n')
  })
  store.replicate(conn)
})
const core = store.get({ key: Buffer.from(opt('key'), 'hex') })
await core.ready()
core.download({ start: 0, end: -1 })
swarm.join(core.discoveryKey, { server: false, client: true })

const want = Number(opt('length', '1'))
const deadline = Date.now() + Number(opt('timeout', '60000'))
while (core.contiguousLength < want || core.length < want) {
  if (Date.now() > deadline) {
    process.stdout.write(JSON.stringify({ error: 'timeout', length: core.length }) + '\n')
    process.exit(1)
  }
  await new Promise((resolve) => setTimeout(resolve, 20))
}
const blocks = []
for (let i = 0; i < core.length; i++) blocks.push((await core.get(i)).toString('hex'))
const treeHash = (await core.treeHash()).toString('hex')
process.stdout.write(JSON.stringify({ length: core.length, fork: core.fork, treeHash, blocks }) + '\n')
await swarm.destroy()
await store.close()
process.exit(0)
