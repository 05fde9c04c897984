// A small gateway between corelog and the Holepunch network.
//
//   node examples/hypercore_gateway.mjs --dir DIR --key HEX [--key HEX ...]
//        [--port 0] [--bootstrap host:port[,host:port]] [--testnet]
//
// It keeps a Corestore in DIR, downloads and seeds the given cores on Hyperswarm (topic = discovery
// key), and listens on 127.0.0.1:PORT for corelog peers speaking Hypercore's wire protocol
// (`corelog.replication.hypercore.connect_hypercore`, or `corelog sync --hypercore`): whatever a
// corelog writer pushes there reaches every swarm peer, live. --testnet starts a local hyperdht
// testnet bound to 127.0.0.1 (for demos and tests); --bootstrap points at one.
// Prints one JSON line when ready: {"port", "bootstrap", "keys"}; then one per core update.
import Corestore from 'corestore'
import Hyperswarm from 'hyperswarm'
import DHT from 'hyperdht'
import NoiseSecretStream from '@hyperswarm/secret-stream'
import createTestnet from '@hyperswarm/testnet'
import net from 'net'

const args = process.argv.slice(2)
const opt = (name, dflt) => {
  const i = args.indexOf('--' + name)
  return i === -1 ? dflt : args[i + 1]
}
const all = (name) => args.flatMap((a, i) => (a === '--' + name ? [args[i + 1]] : []))

let bootstrap = null
let testnet = null
if (args.includes('--testnet')) {
  testnet = await createTestnet(3, { host: '127.0.0.1' })
  bootstrap = testnet.bootstrap
} else if (opt('bootstrap')) {
  bootstrap = opt('bootstrap').split(',').map((hp) => {
    const [host, port] = hp.split(':')
    return { host, port: Number(port) }
  })
}

const store = new Corestore(opt('dir', 'gateway-store'))
await store.ready()
// on a loopback testnet the DHT node binds 127.0.0.1 and is reachable (not firewalled): otherwise
// peers in other processes time out trying to connect to it
const loopback = bootstrap && bootstrap.every((b) => b.host === '127.0.0.1')
const swarm = new Hyperswarm(
  loopback ? { dht: new DHT({ bootstrap, host: '127.0.0.1', firewalled: false }) } : bootstrap ? { bootstrap } : {}
)
swarm.on('connection', (conn) => {
  if (process.env.DEBUG_SWARM) process.stderr.write('gateway: swarm connection\n')
  conn.on('error', (err) => {
    if (process.env.DEBUG_SWARM) process.stderr.write('gateway: ' + err.message + '\n')
  })
  store.replicate(conn)
})

const keys = all('key')
for (const hex of keys) {
  const core = store.get({ key: Buffer.from(hex, 'hex') })
  await core.ready()
  core.download({ start: 0, end: -1 })
  core.on('append', () => report(core))
  core.on('truncate', () => report(core))
  swarm.join(core.discoveryKey, { server: true, client: true })
}
await swarm.flush()

function report(core) {
  process.stdout.write(JSON.stringify({ key: core.key.toString('hex'), length: core.length, fork: core.fork }) + '\n')
}

const server = net.createServer((socket) => {
  const noise = new NoiseSecretStream(false, socket)
  noise.on('error', () => {})
  store.replicate(noise)
})
await new Promise((resolve) => server.listen(Number(opt('port', '0')), '127.0.0.1', resolve))
process.stdout.write(JSON.stringify({ port: server.address().port, bootstrap, keys }) + '\n')

const stop = async () => {
  server.close()
  await swarm.destroy()
  await store.close()
  if (testnet) await testnet.destroy()
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
