// Real broker servers for tests, benchmarks and the demo: nats-server (JetStream), redis-server
// and rabbitmq-server, each on random loopback ports with all of its state in one temporary
// folder, so they clash with nothing installed system-wide.
//
//   import { startNats } from './scripts/lib/brokers.mjs'
//   const nats = await startNats({ stopOnExit: true })  // { url: 'nats://127.0.0.1:40123', ... }
//   await nats.kill('SIGKILL'); await nats.restart()    // a crash, then the same port and data
//   await nats.stop()                                   // stops it and removes its folder
//   stopBroker(state)                                   // the same, synchronously, from the
//                                                       // JSON state (another process, watchdog)
//
// A missing binary is installed from Debian packages when we are root (apt-get update once per
// process, then apt-get install, with the package's own service kept from starting); otherwise
// start*() rejects with a message naming the package. Plain Node ESM with no dependencies, so
// scripts/services.mjs and the vitest global setup can use it before anything is built.

import { spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import {
  accessSync,
  closeSync,
  constants,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { createConnection } from 'node:net'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { freePort, ServiceError } from './common.mjs'

const LOOPBACK = '127.0.0.1'

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

let aptUpdated = false
const POLICY_RC = '/usr/sbin/policy-rc.d'

/**
 * Returns the path of `binary`, installing the Debian package `pkg` first when it is missing and
 * we are root. apt-get runs synchronously, so two starts in one process never race; dpkg's lock
 * (waited for, up to 5 minutes) orders installs across processes.
 */
export function ensureBinary(binary, pkg, { preferredDirs = [], log = defaultLog } = {}) {
  const found = which(binary, preferredDirs)
  if (found) return found
  if (typeof process.getuid !== 'function' || process.getuid() !== 0 || !which('apt-get')) {
    throw new ServiceError(
      `${binary} is not installed. Install the Debian package "${pkg}" ` +
        `(sudo apt-get install -y ${pkg}) and try again.`,
    )
  }
  log(`${binary} not found: installing the Debian package (apt-get install -y ${pkg})...`)
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  const lock = ['-o', 'DPkg::Lock::Timeout=300']
  if (!aptUpdated) {
    apt([...lock, 'update', '-qq'], env)
    aptUpdated = true
  }
  // The packages' postinst scripts start a system-wide service on the default port. A
  // policy-rc.d that exits 101 tells invoke-rc.d not to; we add one only for the install.
  const ownPolicy = !existsSync(POLICY_RC)
  if (ownPolicy) writeFileSync(POLICY_RC, '#!/bin/sh\nexit 101\n', { mode: 0o755 })
  try {
    apt([...lock, 'install', '-y', '-q', pkg], env)
  } finally {
    if (ownPolicy) rmSync(POLICY_RC, { force: true })
  }
  if (!ownPolicy && !/exit\s+101/.test(readFileSync(POLICY_RC, 'utf8'))) {
    // Someone else's policy may have let the service start: stop it so it frees its port.
    spawnSync('invoke-rc.d', [pkg, 'stop'], { stdio: 'ignore' })
  }
  const installed = which(binary, preferredDirs)
  if (!installed) throw new ServiceError(`apt-get installed "${pkg}" but ${binary} is not found`)
  return installed
}

function apt(args, env) {
  const result = spawnSync('apt-get', args, { env, encoding: 'utf8', stdio: 'pipe' })
  if (result.status !== 0) {
    const output = `${result.stdout ?? ''}${result.stderr ?? ''}`.trim().slice(-2000)
    throw new ServiceError(`apt-get ${args.join(' ')} failed (exit ${result.status}): ${output}`)
  }
}

function defaultLog(line) {
  process.stderr.write(`${line}\n`)
}

// ---------------------------------------------------------------------------------------------
// Readiness probes

/**
 * Connects to `port`, writes `hello` (if any) and resolves to what `accept` says about the bytes
 * received so far (undefined: wait for more); false on refusal, timeout or close.
 */
function probe(port, hello, accept, timeoutMs = 1000) {
  return new Promise((resolve) => {
    const socket = createConnection({ host: LOOPBACK, port })
    let received = Buffer.alloc(0)
    let settled = false
    const done = (ok) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      socket.destroy()
      resolve(ok)
    }
    const timer = setTimeout(() => done(false), timeoutMs)
    socket.on('connect', () => {
      if (hello === undefined) {
        if (accept === undefined) done(true)
      } else socket.write(hello)
    })
    socket.on('data', (chunk) => {
      received = Buffer.concat([received, chunk])
      const verdict = accept?.(received)
      if (verdict !== undefined) done(verdict)
    })
    socket.on('error', () => done(false))
    socket.on('close', () => done(false))
  })
}

async function waitUntil(ready, what, child, logFile, timeoutMs) {
  const started = Date.now()
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      const how = child.exitCode ?? child.signalCode
      throw new ServiceError(`${what} exited during startup (${how}).\n${tail(logFile)}`)
    }
    if (await ready()) return
    if (Date.now() - started > timeoutMs) {
      throw new ServiceError(`${what} was not ready after ${timeoutMs} ms.\n${tail(logFile)}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

function tail(file) {
  try {
    return readFileSync(file, 'utf8').split('\n').slice(-25).join('\n')
  } catch {
    return '(no log)'
  }
}

// ---------------------------------------------------------------------------------------------
// Processes. Each server runs in its own process group (detached), so a terminal's Ctrl+C does
// not hit it half-way through a test run, and so signals reach everything it started: the
// rabbitmq-server script is a shell that runs the Erlang VM as its child, and a SIGKILL to the
// shell alone would orphan the VM.

function launch(command, args, { env, cwd, logFile }) {
  const fd = openSync(logFile, 'a')
  try {
    const child = spawn(command, args, { env, cwd, stdio: ['ignore', fd, fd], detached: true })
    // Servers must not keep a test runner or script alive; stop()/stopOnExit end them.
    child.unref()
    return child
  } finally {
    closeSync(fd)
  }
}

/** Members of process group `pgid` that are still running (zombies excluded). */
function groupMembers(pgid) {
  const members = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      // Fields after the command name, which may itself contain spaces and parentheses.
      const [state, , pgrp] = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      if (Number(pgrp) === pgid && state !== 'Z' && state !== 'X') members.push(Number(entry))
    } catch {}
  }
  return members
}

function cmdline(pid) {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ')
  } catch {
    return ''
  }
}

function signalGroup(pgid, signal) {
  try {
    process.kill(-pgid, signal)
  } catch {}
}

function sleepSync(ms) {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)
}

/**
 * Sends `signal` to the group and waits (synchronously) until every member is gone, escalating
 * to SIGKILL after `graceMs`. Only groups with a member whose command line contains one of
 * `markers` (the server's data folder or port) are signalled: a saved pid may have been reused.
 */
function stopGroupSync(pgid, markers, signal = 'SIGTERM', graceMs = 15_000) {
  const members = groupMembers(pgid)
  const ours = (pid) => markers.some((marker) => cmdline(pid).includes(marker))
  if (members.length === 0 || !members.some(ours)) return
  signalGroup(pgid, signal)
  const deadline = Date.now() + graceMs
  while (groupMembers(pgid).length > 0) {
    if (Date.now() > deadline) {
      signalGroup(pgid, 'SIGKILL')
      sleepSync(100)
      return
    }
    sleepSync(25)
  }
}

/** The same as stopGroupSync, without blocking the event loop (for the in-process handles). */
async function stopGroup(pgid, signal = 'SIGTERM', graceMs = 15_000) {
  if (groupMembers(pgid).length === 0) return
  signalGroup(pgid, signal)
  const deadline = Date.now() + graceMs
  while (groupMembers(pgid).length > 0) {
    if (Date.now() > deadline) {
      signalGroup(pgid, 'SIGKILL')
      await new Promise((resolve) => setTimeout(resolve, 100))
      return
    }
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

const stopOnExit = new Set()
process.once('exit', () => {
  for (const state of stopOnExit) stopBroker(state, 'SIGKILL')
})

/**
 * Stops a server from its state (what start* returned, or that state as JSON from another
 * process) and deletes its folder. Synchronous, so it also works in an 'exit' handler and in
 * scripts/lib/watchdog.mjs.
 */
export function stopBroker(state, signal = 'SIGTERM') {
  // redis-server rewrites its command line to "redis-server 127.0.0.1:<port>".
  const markers = [state.root, `${LOOPBACK}:${state.port}`]
  if (state.pid) stopGroupSync(state.pid, markers, signal)
  if (state.epmdPid) stopGroupSync(state.epmdPid, [`-port ${state.epmdPort}`], 'SIGTERM', 5_000)
  rmSync(state.root, { recursive: true, force: true })
}

/**
 * A detached `node brokers.mjs watch <pid> <state file>` that stops the server once process
 * `pid` is gone: a test worker killed by a signal never runs its 'exit' handlers. It reads
 * the state file when it acts, so it follows restarts (new pid).
 */
function startWatchdog(pid, stateFile) {
  const script = fileURLToPath(import.meta.url)
  const child = spawn(process.execPath, [script, 'watch', String(pid), stateFile], {
    detached: true,
    stdio: 'ignore',
  })
  child.unref()
  return child
}

function isAlive(pid) {
  try {
    process.kill(pid, 0)
  } catch (error) {
    return error.code === 'EPERM'
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return !/^[ZX]/.test(stat.slice(stat.lastIndexOf(')') + 2))
  } catch {
    return true
  }
}

function watch(pid, stateFile) {
  process.on('SIGTERM', () => process.exit(0))
  const timer = setInterval(() => {
    if (isAlive(pid)) return
    clearInterval(timer)
    try {
      stopBroker(JSON.parse(readFileSync(stateFile, 'utf8')), 'SIGKILL')
    } catch {
      // Already stopped and removed.
    }
    process.exit(0)
  }, 500)
}

/**
 * Builds the started-server object. `spawnServer()` starts the process and waits until it is
 * ready. The plain fields are the JSON-able state stopBroker() needs; the methods act on it.
 */
async function supervise(fields, spawnServer, options) {
  const state = { ...fields, pid: 0, user: null }
  let child
  try {
    child = await spawnServer()
  } catch (error) {
    stopBroker(state, 'SIGKILL')
    throw error
  }
  state.pid = child.pid
  const stateFile = join(state.root, 'state.json')
  const saveState = () => writeFileSync(stateFile, JSON.stringify(state))
  saveState()
  const watchPid = options.watchPid ?? (options.stopOnExit ? process.pid : undefined)
  const watchdog = watchPid === undefined ? undefined : startWatchdog(watchPid, stateFile)
  if (options.stopOnExit) stopOnExit.add(state)
  let stopped = false
  return Object.assign(state, {
    /** Stops the process (SIGTERM: clean shutdown; SIGKILL: crash), keeping its data. */
    async kill(signal = 'SIGTERM') {
      await stopGroup(child.pid, signal)
    },
    /** Starts it again (after kill, or stopping it first) on the same port with the same data. */
    async restart() {
      if (stopped) throw new ServiceError(`${state.service} server was stopped for good`)
      await stopGroup(child.pid, 'SIGTERM')
      child = await spawnServer()
      state.pid = child.pid
      saveState()
    },
    /** Stops it for good and deletes its folder. */
    async stop() {
      if (stopped) return
      stopped = true
      stopOnExit.delete(state)
      if (watchdog !== undefined) {
        try {
          process.kill(watchdog.pid, 'SIGTERM')
        } catch {}
      }
      await stopGroup(child.pid, 'SIGTERM')
      stopBroker(state)
    },
  })
}

function tempRoot(service, options) {
  return mkdtempSync(join(options.tmpRoot ?? tmpdir(), `breakwater-${service}-`))
}

function readyOrKill(child, ready, what, logFile, timeoutMs) {
  return waitUntil(ready, what, child, logFile, timeoutMs).then(
    () => child,
    async (error) => {
      await stopGroup(child.pid, 'SIGKILL')
      throw error
    },
  )
}

// ---------------------------------------------------------------------------------------------
// NATS with JetStream

/**
 * Options shared by the three start functions:
 * - `stopOnExit`: stop the server and delete its folder when this process exits, also when it
 *   is killed (a watchdog on this pid); without it the server outlives this process
 *   (`scripts/services.mjs start`).
 * - `watchPid`: a detached watchdog stops the server once that process is gone.
 * - `tmpRoot`: parent of the temporary folder (default os.tmpdir()).
 * - `timeoutMs`: how long to wait for the server to be ready.
 * - `log`: receives progress lines (installation).
 */

/**
 * Starts `nats-server -js` on a free loopback port with its JetStream store in a temp folder.
 * `options.config` (NATS configuration text, such as an `authorization` block with users,
 * passwords and permissions) is written to nats.conf in that folder and passed with `-c`; the
 * command-line flags (port, address, JetStream store, name) take precedence over it.
 * `options.jetstream: false` starts it without `-js` (core NATS only, as a misconfigured
 * server would run), to test how a client meets a server without JetStream.
 */
export async function startNats(options = {}) {
  if (options.config !== undefined && typeof options.config !== 'string') {
    throw new ServiceError('startNats: options.config must be NATS configuration text')
  }
  const jetstream = options.jetstream ?? true
  if (typeof jetstream !== 'boolean') {
    throw new ServiceError('startNats: options.jetstream must be a boolean')
  }
  const bin = ensureBinary('nats-server', 'nats-server', options)
  const root = tempRoot('nats', options)
  const port = await freePort()
  const logFile = join(root, 'server.log')
  const args = jetstream ? ['-js', '-sd', join(root, 'jetstream')] : []
  args.push('-a', LOOPBACK, '-p', String(port))
  args.push('-n', `breakwater-${port}`)
  if (options.config !== undefined) {
    const configFile = join(root, 'nats.conf')
    writeFileSync(configFile, options.config)
    args.push('-c', configFile)
  }
  // The server enables JetStream before it accepts clients, so an INFO line announcing
  // JetStream means ready (without JetStream, any INFO line does).
  const ready = () =>
    probe(port, undefined, (data) => {
      const text = data.toString('latin1')
      if (!text.includes('\r\n')) return undefined
      return text.startsWith('INFO ') && (!jetstream || text.includes('"jetstream":true'))
    })
  const spawnServer = () => {
    const child = launch(bin, args, { env: process.env, cwd: root, logFile })
    return readyOrKill(child, ready, 'nats-server', logFile, options.timeoutMs ?? 20_000)
  }
  const url = `nats://${LOOPBACK}:${port}`
  return supervise({ service: 'nats', url, port, root, bin }, spawnServer, options)
}

// ---------------------------------------------------------------------------------------------
// Redis

/**
 * Checks a start function's `options.tls`: undefined, or `{ certFile, keyFile }` (the server's
 * certificate and key, PEM files) with an optional `caFile` (the CA a client certificate must
 * be signed by: given, the server requires one).
 */
function checkServerTls(start, tls) {
  if (tls === undefined) return undefined
  if (
    typeof tls?.certFile !== 'string' ||
    typeof tls?.keyFile !== 'string' ||
    (tls.caFile !== undefined && typeof tls.caFile !== 'string')
  ) {
    throw new ServiceError(`${start}: options.tls must be { certFile, keyFile, caFile? }`)
  }
  return tls
}

/**
 * Starts `redis-server` on a free loopback port: AOF on with `appendfsync always` (a reply means
 * the write reached the disk), no RDB snapshots, no config file (so Debian's
 * /etc/redis/redis.conf is never read), every file inside a temp folder.
 * `options.tls` (`{ certFile, keyFile, caFile? }`, PEM files) adds a TLS port presenting that
 * certificate, whose URL is `tlsUrl`; the plain port stays (it is how readiness is probed).
 * With `caFile` the TLS port requires a client certificate signed by that CA
 * (`tls-auth-clients yes`); without it no client certificate is asked.
 */
export async function startRedis(options = {}) {
  const tls = checkServerTls('startRedis', options.tls)
  const bin = ensureBinary('redis-server', 'redis-server', options)
  const root = tempRoot('redis', options)
  const port = await freePort()
  const tlsPort = tls === undefined ? undefined : await freePort()
  const logFile = join(root, 'server.log')
  const args = [
    ['--port', String(port)],
    ['--bind', LOOPBACK],
    ['--dir', root],
    ['--appendonly', 'yes'],
    ['--appendfsync', 'always'],
    ['--save', ''],
    ['--daemonize', 'no'],
    ['--logfile', ''],
    tls === undefined
      ? []
      : [
          ['--tls-port', String(tlsPort)],
          ['--tls-cert-file', tls.certFile],
          ['--tls-key-file', tls.keyFile],
          tls.caFile === undefined
            ? ['--tls-auth-clients', 'no']
            : ['--tls-ca-cert-file', tls.caFile, '--tls-auth-clients', 'yes'],
        ].flat(),
  ].flat()
  // PING answers -LOADING while the AOF is replayed after a restart: wait for +PONG.
  const ready = () =>
    probe(port, 'PING\r\n', (data) => {
      const text = data.toString('latin1')
      return text.includes('\r\n') ? text.startsWith('+PONG') : undefined
    })
  const spawnServer = () => {
    const child = launch(bin, args, { env: process.env, cwd: root, logFile })
    return readyOrKill(child, ready, 'redis-server', logFile, options.timeoutMs ?? 20_000)
  }
  const url = `redis://${LOOPBACK}:${port}`
  const fields = { service: 'redis', url, port, root, bin }
  if (tls !== undefined) fields.tlsUrl = `rediss://${LOOPBACK}:${tlsPort}`
  return supervise(fields, spawnServer, options)
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ

const rabbitLibBin = '/usr/lib/rabbitmq/bin'

/**
 * Starts `rabbitmq-server` (Debian 3.10) as its own Erlang node: random node name, AMQP and
 * distribution ports on loopback; mnesia, logs, cookie (HOME), config and plugin files in a temp
 * folder; and its own `epmd` on a private port, so it meets no system RabbitMQ, no other Erlang
 * node and no epmd daemon left on 4369. Boot takes a few seconds; readiness is an AMQP
 * handshake, because the listener opens only once the broker has booted.
 * `options.tls` (`{ certFile, keyFile, caFile? }`, PEM files) adds an AMQPS listener presenting
 * that certificate, whose URL is `tlsUrl`; with `caFile` it requires a client certificate
 * signed by that CA (`verify_peer`, `fail_if_no_peer_cert`). The plain port stays (readiness).
 */
export async function startRabbitMq(options = {}) {
  // A boot can fail for a reason that a fresh try does not meet: the Erlang distribution of
  // the boot's prelaunch node could not start ('nodistribution', seen under CI load), most
  // likely a port freePort() found free but another process took before the node bound it.
  // Each try gets new ports, a new node name and a new folder (the failed one is removed); a
  // server that exits on every try is a real failure and its last error is thrown.
  const attempts = 3
  for (let attempt = 1; ; attempt++) {
    try {
      return await startRabbitMqOnce(options)
    } catch (error) {
      const exited = error instanceof ServiceError && /exited during startup/.test(error.message)
      if (!exited || attempt === attempts) throw error
      process.stderr.write(
        `rabbitmq-server exited during startup (try ${attempt} of ${attempts}); trying again on new ports\n`,
      )
    }
  }
}

async function startRabbitMqOnce(options) {
  const tls = checkServerTls('startRabbitMq', options.tls)
  // /usr/sbin/rabbitmq-server would `su rabbitmq` and use /var/lib/rabbitmq; the script it
  // wraps runs as any user with the environment below.
  const preferredDirs = [rabbitLibBin]
  const bin = ensureBinary('rabbitmq-server', 'rabbitmq-server', { ...options, preferredDirs })
  const epmdBin = ensureBinary('epmd', 'erlang-base', options)
  const root = tempRoot('rabbitmq', options)
  const port = await freePort()
  const distPort = await freePort()
  const epmdPort = await freePort()
  const nodeName = `bw${randomBytes(4).toString('hex')}@localhost`
  for (const sub of ['home', 'mnesia', 'log']) mkdirSync(join(root, sub), { recursive: true })
  writeFileSync(join(root, 'enabled_plugins'), '[].\n')
  writeFileSync(join(root, 'rabbitmq-env.conf'), '')
  const tlsPort = tls === undefined ? undefined : await freePort()
  // A nearly full /tmp must not trip the default 50 MB free-disk alarm in tests.
  const config = ['disk_free_limit.absolute = 10MB']
  if (tls !== undefined) {
    config.push(
      `listeners.ssl.1 = ${LOOPBACK}:${tlsPort}`,
      `ssl_options.certfile = ${tls.certFile}`,
      `ssl_options.keyfile = ${tls.keyFile}`,
    )
    if (tls.caFile !== undefined) {
      config.push(
        `ssl_options.cacertfile = ${tls.caFile}`,
        'ssl_options.verify = verify_peer',
        'ssl_options.fail_if_no_peer_cert = true',
      )
    }
  }
  writeFileSync(join(root, 'rabbitmq.conf'), `${config.join('\n')}\n`)
  const env = {
    ...process.env,
    HOME: join(root, 'home'),
    ERL_EPMD_PORT: String(epmdPort),
    ERL_EPMD_ADDRESS: LOOPBACK,
    RABBITMQ_CONF_ENV_FILE: join(root, 'rabbitmq-env.conf'),
    RABBITMQ_CONFIG_FILE: join(root, 'rabbitmq.conf'),
    RABBITMQ_ADVANCED_CONFIG_FILE: join(root, 'advanced.config'),
    RABBITMQ_ENABLED_PLUGINS_FILE: join(root, 'enabled_plugins'),
    RABBITMQ_MNESIA_BASE: join(root, 'mnesia'),
    RABBITMQ_LOG_BASE: join(root, 'log'),
    RABBITMQ_LOGS: '-',
    RABBITMQ_PID_FILE: join(root, 'rabbitmq.pid'),
    RABBITMQ_NODENAME: nodeName,
    RABBITMQ_NODE_IP_ADDRESS: LOOPBACK,
    RABBITMQ_NODE_PORT: String(port),
    RABBITMQ_DIST_PORT: String(distPort),
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: '-kernel inet_dist_use_interface {127,0,0,1}',
  }
  // Our own epmd in the foreground (not the -daemon Erlang would otherwise leave running on the
  // shared default port) so stopBroker() can end it.
  const epmdLog = join(root, 'epmd.log')
  const epmdArgs = ['-port', String(epmdPort), '-address', LOOPBACK]
  const epmd = launch(epmdBin, epmdArgs, { env, cwd: root, logFile: epmdLog })
  const fields = { service: 'rabbitmq', url: '', port, root, bin, epmdPid: epmd.pid, epmdPort }
  fields.url = `amqp://guest:guest@${LOOPBACK}:${port}`
  if (tls !== undefined) fields.tlsUrl = `amqps://guest:guest@${LOOPBACK}:${tlsPort}`
  try {
    await readyOrKill(epmd, () => probe(epmdPort), 'epmd', epmdLog, 10_000)
  } catch (error) {
    stopBroker({ ...fields, pid: 0 }, 'SIGKILL')
    throw error
  }
  const logFile = join(root, 'server.log')
  const amqpHeader = Buffer.from([0x41, 0x4d, 0x51, 0x50, 0, 0, 9, 1])
  // Frame type 1 (a method frame: connection.start) means the broker is up.
  const ready = () =>
    probe(port, amqpHeader, (data) => (data.length > 0 ? data[0] === 1 : undefined))
  const spawnServer = () => {
    const child = launch(bin, [], { env, cwd: root, logFile })
    return readyOrKill(child, ready, 'rabbitmq-server', logFile, options.timeoutMs ?? 90_000)
  }
  return supervise(fields, spawnServer, options)
}

/** Starts one server by name: 'nats' | 'redis' | 'rabbitmq'. */
export function startBroker(name, options) {
  if (name === 'nats') return startNats(options)
  if (name === 'redis') return startRedis(options)
  if (name === 'rabbitmq') return startRabbitMq(options)
  return Promise.reject(new ServiceError(`unknown broker "${name}" (known: nats, redis, rabbitmq)`))
}

if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv[2] === 'watch') {
  watch(Number(process.argv[3]), process.argv[4])
}
