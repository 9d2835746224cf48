// Real broker servers for tests and benchmarks: nats-server (JetStream), redis-server and
// rabbitmq-server, each on random loopback ports with all of its state in one temporary folder.
//
//   import { startNats, startRedis, startRabbitMq } from './scripts/lib/brokers.mjs'
//   const nats = await startNats()      // { url: 'nats://127.0.0.1:40123', ... }
//   await nats.kill(); await nats.restart()   // same port, same data: a broker restart
//   await nats.stop()                   // stops the server and removes its folder
//
// A missing binary is installed from Debian packages when we are root (apt-get update once per
// process, then apt-get install); otherwise start*() rejects with a message naming the package.
// Plain Node ESM with no dependencies, so scripts/services.mjs and the vitest global setup can
// both use it before anything is built.

import { spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import {
  accessSync,
  closeSync,
  constants,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
} from 'node:fs'
import { mkdtemp, rm, unlink, writeFile } from 'node:fs/promises'
import { createConnection, createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'

const LOOPBACK = '127.0.0.1'

/**
 * @typedef {object} BrokerServer
 * @property {'nats' | 'redis' | 'rabbitmq'} kind
 * @property {string} url        Connection URL for the adapters (nats://, redis://, amqp://).
 * @property {number} port       The client port on 127.0.0.1.
 * @property {string} dir        The temporary folder holding the server's data and log.
 * @property {() => number | undefined} pid  The server's process id while it runs.
 * @property {(signal?: NodeJS.Signals) => Promise<void>} kill
 *   Stops the process (SIGTERM: clean shutdown; SIGKILL: crash) and keeps its data.
 * @property {() => Promise<void>} restart  Starts it again on the same port with the same data.
 * @property {() => Promise<void>} stop     Stops it for good and removes `dir`.
 */

// ---------------------------------------------------------------------------------------------
// Binaries and installation

const extraDirs = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin']

function which(name, preferred = []) {
  const dirs = [...preferred, ...(process.env.PATH ?? '').split(delimiter), ...extraDirs]
  for (const dir of dirs) {
    if (!dir) continue
    const candidate = join(dir, name)
    try {
      accessSync(candidate, constants.X_OK)
      return candidate
    } catch {}
  }
  return undefined
}

let aptUpdated
const installs = new Map()

/**
 * Returns the path of `binary`, installing Debian package `pkg` first when it is missing and we
 * are root. Installs run one at a time per process; dpkg's own lock orders them across processes.
 */
export async function ensureBinary(binary, pkg, preferredDirs = []) {
  const found = which(binary, preferredDirs)
  if (found) return found
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
    throw new Error(
      `${binary} is not installed. Install the Debian package "${pkg}" (apt-get install -y ${pkg}) and run again.`,
    )
  }
  let pending = installs.get(pkg)
  if (!pending) {
    pending = aptInstall(pkg)
    installs.set(pkg, pending)
  }
  await pending
  const installed = which(binary, preferredDirs)
  if (!installed) throw new Error(`apt-get installed "${pkg}" but ${binary} is still not found`)
  return installed
}

const POLICY_RC = '/usr/sbin/policy-rc.d'
const services = {
  'nats-server': 'nats-server',
  'redis-server': 'redis-server',
  'rabbitmq-server': 'rabbitmq-server',
}

async function aptInstall(pkg) {
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  const lock = ['-o', 'DPkg::Lock::Timeout=300']
  aptUpdated ??= run('apt-get', [...lock, 'update', '-qq'], env)
  await aptUpdated
  // The packages' postinst scripts start a system-wide service on the default port. A
  // policy-rc.d that exits 101 tells invoke-rc.d not to; we add one only for the install.
  const ownPolicy = !existsSync(POLICY_RC)
  if (ownPolicy) await writeFile(POLICY_RC, '#!/bin/sh\nexit 101\n', { mode: 0o755 })
  try {
    await run('apt-get', [...lock, 'install', '-y', '-q', pkg], env)
  } finally {
    if (ownPolicy) await unlink(POLICY_RC).catch(() => {})
  }
  const policy = readFileSync(POLICY_RC, { encoding: 'utf8', flag: 'a+' })
  if (!ownPolicy && !/exit\s+101/.test(policy) && services[pkg]) {
    // Someone else's policy allowed the start: stop the system service so it frees its port.
    spawnSync('invoke-rc.d', [services[pkg], 'stop'], { stdio: 'ignore' })
  }
}

function run(command, args, env) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env, stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (chunk) => {
      stderr += chunk
    })
    child.on('error', reject)
    child.on('exit', (code) =>
      code === 0
        ? resolve()
        : reject(
            new Error(`${command} ${args.join(' ')} exited with ${code}: ${stderr.slice(-2000)}`),
          ),
    )
  })
}

// ---------------------------------------------------------------------------------------------
// Ports and readiness

/** A free TCP port on 127.0.0.1 (the kernel picks it; it is released before we return it). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.unref()
    server.on('error', reject)
    server.listen(0, LOOPBACK, () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

/**
 * Connects to port, writes `hello` (if any) and resolves true when the first bytes received
 * satisfy `accept`, false on refusal, timeout or a non-matching answer.
 */
function probe(port, hello, accept, timeoutMs = 1000) {
  return new Promise((resolve) => {
    const socket = createConnection({ host: LOOPBACK, port })
    let received = Buffer.alloc(0)
    const done = (ok) => {
      clearTimeout(timer)
      socket.destroy()
      resolve(ok)
    }
    const timer = setTimeout(() => done(false), timeoutMs)
    socket.on('connect', () => {
      if (hello) socket.write(hello)
    })
    socket.on('data', (chunk) => {
      received = Buffer.concat([received, chunk])
      const verdict = accept(received)
      if (verdict !== undefined) done(verdict)
    })
    socket.on('error', () => done(false))
    socket.on('close', () => done(false))
  })
}

async function waitUntil(check, describe, child, logFile, timeoutMs) {
  const started = Date.now()
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(
        `${describe} exited during startup (${child.exitCode ?? child.signalCode}).\n${tail(logFile)}`,
      )
    }
    if (await check()) return
    if (Date.now() - started > timeoutMs) {
      throw new Error(`${describe} was not ready after ${timeoutMs} ms.\n${tail(logFile)}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

function canConnect(port) {
  return new Promise((resolve) => {
    const socket = createConnection({ host: LOOPBACK, port })
    socket.on('connect', () => {
      socket.destroy()
      resolve(true)
    })
    socket.on('error', () => resolve(false))
  })
}

function tail(file) {
  try {
    return readFileSync(file, 'utf8').split('\n').slice(-25).join('\n')
  } catch {
    return '(no log)'
  }
}

// ---------------------------------------------------------------------------------------------
// Process supervision shared by the three servers

const live = new Set()
// Best effort: a test process that exits without calling stop() must not leave servers behind.
process.once('exit', () => {
  for (const child of live) child.kill('SIGKILL')
})

function launch(command, args, { env, cwd, logFile }) {
  const fd = openSync(logFile, 'a')
  try {
    const child = spawn(command, args, { env, cwd, stdio: ['ignore', fd, fd] })
    live.add(child)
    child.on('exit', () => live.delete(child))
    child.on('error', () => live.delete(child))
    return child
  } finally {
    closeSync(fd)
  }
}

function terminate(child, signal, graceMs = 15_000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
    child.once('exit', () => {
      clearTimeout(timer)
      resolve()
    })
    child.kill(signal)
  })
}

/**
 * Builds a BrokerServer from a `spawnServer()` that starts the process and waits until it is
 * ready, plus optional `cleanup()` run by stop().
 */
async function supervise({ kind, url, port, dir, spawnServer, cleanup }) {
  let child
  try {
    child = await spawnServer()
  } catch (error) {
    if (cleanup) await cleanup()
    await rm(dir, { recursive: true, force: true })
    throw error
  }
  let stopped = false
  return {
    kind,
    url,
    port,
    dir,
    pid: () => (child && child.exitCode === null ? child.pid : undefined),
    async kill(signal = 'SIGTERM') {
      await terminate(child, signal)
    },
    async restart() {
      if (stopped) throw new Error(`${kind} server was stopped for good`)
      await terminate(child, 'SIGTERM')
      child = await spawnServer()
    },
    async stop() {
      if (stopped) return
      stopped = true
      await terminate(child, 'SIGTERM')
      if (cleanup) await cleanup()
      await rm(dir, { recursive: true, force: true })
    },
  }
}

async function tempDir(kind) {
  return mkdtemp(join(tmpdir(), `breakwater-${kind}-`))
}

// ---------------------------------------------------------------------------------------------
// NATS with JetStream

/**
 * Starts `nats-server -js` on a free loopback port with its JetStream store in a temp folder.
 * @returns {Promise<BrokerServer>}
 */
export async function startNats({ timeoutMs = 20_000 } = {}) {
  const binary = await ensureBinary('nats-server', 'nats-server')
  const dir = await tempDir('nats')
  const port = await freePort()
  const logFile = join(dir, 'server.log')
  const args = [
    '-js',
    '-a',
    LOOPBACK,
    '-p',
    String(port),
    '-sd',
    join(dir, 'jetstream'),
    '-n',
    `bw-${port}`,
  ]
  const spawnServer = async () => {
    const child = launch(binary, args, { env: process.env, cwd: dir, logFile })
    // The server enables JetStream before it accepts clients, so its INFO line means ready.
    const ready = () =>
      probe(port, undefined, (data) => {
        const text = data.toString('latin1')
        if (!text.includes('\r\n')) return undefined
        return text.startsWith('INFO ') && text.includes('"jetstream":true')
      })
    await waitUntil(ready, 'nats-server', child, logFile, timeoutMs).catch(async (error) => {
      await terminate(child, 'SIGKILL')
      throw error
    })
    return child
  }
  return supervise({ kind: 'nats', url: `nats://${LOOPBACK}:${port}`, port, dir, spawnServer })
}

// ---------------------------------------------------------------------------------------------
// Redis

/**
 * Starts `redis-server` on a free loopback port, AOF on with `appendfsync always` (a reply
 * means the write reached the disk), no RDB snapshots, every file inside a temp folder.
 * @returns {Promise<BrokerServer>}
 */
export async function startRedis({ timeoutMs = 20_000 } = {}) {
  const binary = await ensureBinary('redis-server', 'redis-server')
  const dir = await tempDir('redis')
  const port = await freePort()
  const logFile = join(dir, 'server.log')
  // Arguments only: no config file, so the Debian /etc/redis/redis.conf is never read.
  const args = [
    '--port',
    String(port),
    '--bind',
    LOOPBACK,
    '--dir',
    dir,
    '--appendonly',
    'yes',
    '--appendfsync',
    'always',
    '--save',
    '',
    '--daemonize',
    'no',
    '--protected-mode',
    'yes',
    '--logfile',
    '',
    '--unixsocket',
    '',
  ]
  const spawnServer = async () => {
    const child = launch(binary, args, { env: process.env, cwd: dir, logFile })
    // PING answers -LOADING while the AOF is replayed after a restart: wait for +PONG.
    const ready = () =>
      probe(port, 'PING\r\n', (data) => {
        const text = data.toString('latin1')
        if (!text.includes('\r\n')) return undefined
        return text.startsWith('+PONG')
      })
    await waitUntil(ready, 'redis-server', child, logFile, timeoutMs).catch(async (error) => {
      await terminate(child, 'SIGKILL')
      throw error
    })
    return child
  }
  return supervise({ kind: 'redis', url: `redis://${LOOPBACK}:${port}`, port, dir, spawnServer })
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ

const rabbitLibBin = '/usr/lib/rabbitmq/bin'

/**
 * Starts `rabbitmq-server` (Debian 3.10) as its own Erlang node: random node name, AMQP and
 * distribution ports on loopback, mnesia, logs, cookie (HOME), config and plugin files all in a
 * temp folder, and its own `epmd` on a private port, so it clashes with no system RabbitMQ or
 * other Erlang node. Readiness is an AMQP handshake: the listener opens only after boot.
 * @returns {Promise<BrokerServer>}
 */
export async function startRabbitMq({ timeoutMs = 90_000 } = {}) {
  // The /usr/sbin wrapper would `su rabbitmq` and use /var/lib/rabbitmq; the script behind it
  // runs as any user with the environment below.
  const binary = await ensureBinary('rabbitmq-server', 'rabbitmq-server', [rabbitLibBin])
  const server = existsSync(join(rabbitLibBin, 'rabbitmq-server'))
    ? join(rabbitLibBin, 'rabbitmq-server')
    : binary
  const epmdBinary = await ensureBinary('epmd', 'erlang-base')
  const dir = await tempDir('rabbitmq')
  const [port, distPort, epmdPort] = [await freePort(), await freePort(), await freePort()]
  const nodeName = `bw${randomBytes(4).toString('hex')}@localhost`
  for (const sub of ['home', 'mnesia', 'log']) mkdirSync(join(dir, sub), { recursive: true })
  await writeFile(join(dir, 'enabled_plugins'), '[].\n')
  await writeFile(join(dir, 'rabbitmq-env.conf'), '')
  // Quorum queues need no config; the disk limit is lowered so a nearly full /tmp still boots.
  await writeFile(join(dir, 'rabbitmq.conf'), 'disk_free_limit.absolute = 10MB\n')
  const env = {
    ...process.env,
    HOME: join(dir, 'home'),
    ERL_EPMD_PORT: String(epmdPort),
    ERL_EPMD_ADDRESS: LOOPBACK,
    RABBITMQ_CONF_ENV_FILE: join(dir, 'rabbitmq-env.conf'),
    RABBITMQ_CONFIG_FILE: join(dir, 'rabbitmq.conf'),
    RABBITMQ_ADVANCED_CONFIG_FILE: join(dir, 'advanced.config'),
    RABBITMQ_ENABLED_PLUGINS_FILE: join(dir, 'enabled_plugins'),
    RABBITMQ_MNESIA_BASE: join(dir, 'mnesia'),
    RABBITMQ_LOG_BASE: join(dir, 'log'),
    RABBITMQ_LOGS: '-',
    RABBITMQ_PID_FILE: join(dir, 'rabbitmq.pid'),
    RABBITMQ_NODENAME: nodeName,
    RABBITMQ_NODE_IP_ADDRESS: LOOPBACK,
    RABBITMQ_NODE_PORT: String(port),
    RABBITMQ_DIST_PORT: String(distPort),
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: '-kernel inet_dist_use_interface {127,0,0,1}',
  }
  // Our own epmd (a foreground child, not the -daemon Erlang would start on the shared default
  // port 4369) so stop() can end it and two test runs never share one.
  const epmdLog = join(dir, 'epmd.log')
  const epmd = launch(epmdBinary, ['-port', String(epmdPort), '-address', LOOPBACK], {
    env,
    cwd: dir,
    logFile: epmdLog,
  })
  await waitUntil(() => canConnect(epmdPort), 'epmd', epmd, epmdLog, 10_000)

  const logFile = join(dir, 'server.log')
  const amqpHeader = Buffer.from([0x41, 0x4d, 0x51, 0x50, 0, 0, 9, 1])
  const spawnServer = async () => {
    const child = launch(server, [], { env, cwd: dir, logFile })
    // Frame type 1 (method) is connection.start: the broker finished booting.
    const ready = () =>
      probe(port, amqpHeader, (data) => (data.length > 0 ? data[0] === 1 : undefined))
    await waitUntil(ready, 'rabbitmq-server', child, logFile, timeoutMs).catch(async (error) => {
      await terminate(child, 'SIGKILL')
      throw error
    })
    return child
  }
  return supervise({
    kind: 'rabbitmq',
    url: `amqp://guest:guest@${LOOPBACK}:${port}`,
    port,
    dir,
    spawnServer,
    cleanup: () => terminate(epmd, 'SIGTERM', 5_000),
  })
}

/** Starts one server by kind: 'nats' | 'redis' | 'rabbitmq'. */
export function startBroker(kind, options) {
  if (kind === 'nats') return startNats(options)
  if (kind === 'redis') return startRedis(options)
  if (kind === 'rabbitmq') return startRabbitMq(options)
  throw new Error(`unknown broker "${kind}": expected nats, redis or rabbitmq`)
}
