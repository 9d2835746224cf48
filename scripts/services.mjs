#!/usr/bin/env node
// Real servers for tests and demos, on loopback, in temporary folders:
//   node scripts/services.mjs start [postgres|nats|redis|rabbitmq|chromium]   start (installing if
//                                                needed), print env lines; none: all of them
//   node scripts/services.mjs stop [name...]     stop and delete the folders
//   node scripts/services.mjs env                print VAR=url for every running service (one
//                                                that no longer answers is left out, with a note)
// Importable too: startService('postgres', { watchPid }) returns { url, stop() }.
// A service is one row of the table below (start + stop + its environment variable), so NATS,
// Redis and RabbitMQ join the same way.
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { startNats, startRabbitMq, startRedis, stopBroker } from './lib/brokers.mjs'
import { startChromium, stopChromium } from './lib/chromium.mjs'
import { ServiceError } from './lib/common.mjs'
import { startPostgres, stopPostgres } from './lib/postgres.mjs'

export { ServiceError } from './lib/common.mjs'
export { findPostgresBin, startPostgres, stopPostgres } from './lib/postgres.mjs'

/** Every service this script manages. */
export const services = {
  postgres: {
    env: 'BREAKWATER_TEST_PG_URL',
    start: startPostgres,
    stop: stopPostgres,
  },
  // NATS with JetStream, Redis (AOF, fsync always), RabbitMQ: scripts/lib/brokers.mjs.
  nats: { env: 'BREAKWATER_TEST_NATS_URL', start: startNats, stop: stopBroker },
  redis: { env: 'BREAKWATER_TEST_REDIS_URL', start: startRedis, stop: stopBroker },
  rabbitmq: { env: 'BREAKWATER_TEST_RABBITMQ_URL', start: startRabbitMq, stop: stopBroker },
  // Not a server: headless Chromium for the shop dashboard's browser tests, installed from the
  // Debian package when missing (its "url" is the binary's path). scripts/lib/chromium.mjs.
  chromium: { env: 'BREAKWATER_CHROMIUM', start: startChromium, stop: stopChromium },
}

/** Starts one service; resolves to `{ service, url, ..., stop() }`. */
export async function startService(name, options = {}) {
  const service = services[name]
  if (service === undefined) throw new ServiceError(`unknown service "${name}"`)
  return service.start(options)
}

/** Stops a service from the state its start returned (or that the CLI saved). */
export function stopService(state) {
  const service = services[state.service]
  if (service === undefined) throw new ServiceError(`unknown service "${state.service}"`)
  service.stop(state)
}

// The CLI keeps what it started under the repository's .breakwater/ folder (or
// BREAKWATER_SERVICES_DIR), so `stop` and `env` in a later invocation can find it.
const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..')
const stateDir = process.env.BREAKWATER_SERVICES_DIR || join(repoRoot, '.breakwater', 'services')
const stateFile = (name) => join(stateDir, `${name}.json`)

function readState(name) {
  const file = stateFile(name)
  if (!existsSync(file)) return undefined
  return JSON.parse(readFileSync(file, 'utf8'))
}

/**
 * Whether the server a saved state describes still answers on its loopback port. A machine
 * restart kills the servers but leaves the state and folders: taken as running, the dead URL
 * was printed and every test failed to connect. States without a port (chromium) count as alive.
 */
function answers(state) {
  if (typeof state.port !== 'number') return Promise.resolve(true)
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port: state.port })
    const done = (alive) => {
      socket.destroy()
      resolve(alive)
    }
    socket.setTimeout(2_000, () => done(false))
    socket.once('connect', () => done(true))
    socket.once('error', () => done(false))
  })
}

/** Removes a saved state whose server is gone, and what is left of its folder. */
function forgetDead(name, state) {
  try {
    stopService(state)
  } catch {
    // The server is gone already; its stop may find nothing to stop.
  }
  if (typeof state.root === 'string') rmSync(state.root, { recursive: true, force: true })
  rmSync(stateFile(name), { force: true })
}

function runningNames() {
  if (!existsSync(stateDir)) return []
  return readdirSync(stateDir)
    .filter((file) => file.endsWith('.json'))
    .map((file) => file.slice(0, -'.json'.length))
}

function selected(names) {
  for (const name of names) {
    if (services[name] === undefined) {
      throw new ServiceError(
        `unknown service "${name}" (known: ${Object.keys(services).join(', ')})`,
      )
    }
  }
  return names
}

async function cli(argv) {
  const [command, ...rest] = argv
  if (command === 'start') {
    const names = selected(rest.length > 0 ? rest : Object.keys(services))
    mkdirSync(stateDir, { recursive: true })
    for (const name of names) {
      const existing = readState(name)
      if (existing !== undefined && existsSync(existing.root ?? '')) {
        if (await answers(existing)) {
          process.stdout.write(`${services[name].env}=${existing.url}\n`)
          continue
        }
        process.stderr.write(
          `${name}: not answering on port ${existing.port}; starting a new one\n`,
        )
        forgetDead(name, existing)
      }
      const { stop: _stop, ...state } = await startService(name)
      writeFileSync(stateFile(name), JSON.stringify(state), { mode: 0o600 })
      process.stdout.write(`${services[name].env}=${state.url}\n`)
    }
    return 0
  }
  if (command === 'stop') {
    const names = selected(rest.length > 0 ? rest : runningNames())
    for (const name of names) {
      const state = readState(name)
      if (state === undefined) {
        process.stderr.write(`${name}: not running\n`)
        continue
      }
      stopService(state)
      rmSync(stateFile(name), { force: true })
      process.stderr.write(`${name}: stopped\n`)
    }
    return 0
  }
  if (command === 'env') {
    for (const name of runningNames()) {
      const state = readState(name)
      if (state === undefined || services[name] === undefined) continue
      if (await answers(state)) process.stdout.write(`${services[name].env}=${state.url}\n`)
      else
        process.stderr.write(
          `${name}: not answering on port ${state.port} (stopped since it started; run start again)\n`,
        )
    }
    return 0
  }
  process.stderr.write(
    'usage: node scripts/services.mjs start [service...] | stop [service...] | env\n' +
      `services: ${Object.keys(services).join(', ')}\n`,
  )
  return 2
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  try {
    process.exitCode = await cli(process.argv.slice(2))
  } catch (error) {
    process.stderr.write(
      `services: ${error instanceof ServiceError ? error.message : (error?.stack ?? error)}\n`,
    )
    process.exitCode = 1
  }
}
