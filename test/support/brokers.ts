// Broker servers for tests: one server of each kind per vitest run, shared by every test file
// (each test uses its own topics and groups, so they never see each other's messages). Tests
// that stop or crash a server get a private one from startPrivateBroker().
//
// The global setup (startRunBrokers) owns the shared servers. It starts all three at once, in
// parallel with PostgreSQL, when the whole suite runs; when vitest runs only some files it
// starts a server the first time a test asks for it, so `vitest run test/idempotency` never
// boots RabbitMQ (seconds of CPU on a 2-core machine). Workers ask over a small loopback HTTP
// endpoint, because a server started after the workers are up cannot reach them through
// `provide` or the environment.
import { createServer } from 'node:http'
import { inject } from 'vitest'
import type { TestProject } from 'vitest/node'
import { type BrokerName, type StartedBroker, startBroker } from '../../scripts/lib/brokers.mjs'
import { listenOnLoopback } from './loopback.js'

export type { BrokerName, StartedBroker } from '../../scripts/lib/brokers.mjs'

declare module 'vitest' {
  export interface ProvidedContext {
    /** Base URL of the global setup's broker endpoint (GET /<name> answers the server URL). */
    breakwaterBrokers: string | undefined
  }
}

/**
 * The environment variable naming an already running server (set it to test against your own
 * server; the global setup then starts none), also read by child processes.
 */
export const brokerEnv: Readonly<Record<BrokerName, string>> = {
  nats: 'BREAKWATER_TEST_NATS_URL',
  redis: 'BREAKWATER_TEST_REDIS_URL',
  rabbitmq: 'BREAKWATER_TEST_RABBITMQ_URL',
}

const brokerNames: readonly BrokerName[] = ['nats', 'redis', 'rabbitmq']

function fromEnv(name: BrokerName): string | undefined {
  const url = process.env[brokerEnv[name]]
  return url === undefined || url === '' ? undefined : url
}

// Servers this test file had to start itself because no global setup runs (a custom config).
const ownServers = new Map<BrokerName, Promise<StartedBroker>>()

/**
 * The URL of the run's shared `name` server: from its environment variable, else from the
 * global setup (which starts it on first request), else a server started for this test file
 * (stopped by {@link stopOwnBrokers}, or when the worker exits). Throws, failing the test,
 * when the server cannot be started, with the reason.
 */
export async function brokerUrl(name: BrokerName): Promise<string> {
  const given = fromEnv(name)
  if (given !== undefined) return given
  const endpoint = inject('breakwaterBrokers')
  if (endpoint !== undefined) {
    const response = await fetch(`${endpoint}/${name}`)
    const body = await response.text()
    if (!response.ok)
      throw new Error(`${name} is needed by this test but is not available: ${body}`)
    // Child processes this worker spawns find it too.
    process.env[brokerEnv[name]] = body
    return body
  }
  let server = ownServers.get(name)
  if (server === undefined) {
    server = startBroker(name, { stopOnExit: true })
    ownServers.set(name, server)
  }
  return (await server).url
}

/** Stops the servers {@link brokerUrl} started for this file (call it in `afterAll`). */
export async function stopOwnBrokers(): Promise<void> {
  const servers = [...ownServers.values()]
  ownServers.clear()
  await Promise.all(servers.map(async (server) => (await server).stop()))
}

/**
 * A server only the calling test uses, to stop, crash and restart. The caller stops it; it is
 * also stopped if the worker exits or is killed first.
 */
export function startPrivateBroker(name: BrokerName): Promise<StartedBroker> {
  return startBroker(name, { stopOnExit: true })
}

/**
 * True when vitest was started without file filters (the whole suite), judged from the
 * command line; a wrong guess only changes when servers start, never whether tests get them.
 */
function wholeSuite(argv: readonly string[]): boolean {
  const run = argv.findIndex((arg) => arg === 'run' || arg === 'watch' || arg === 'dev')
  const rest = argv.slice(run >= 0 ? run + 1 : 2)
  return !rest.some((arg) => !arg.startsWith('-'))
}

/**
 * For the global setup: serves the shared servers to the workers (starting each once, on first
 * request, or all at once for a whole-suite run), and returns the teardown that stops them. A
 * server that cannot start does not abort the run: the tests that need it fail with the reason.
 */
export async function startRunBrokers(project: TestProject): Promise<() => Promise<void>> {
  const starting = new Map<BrokerName, Promise<StartedBroker>>()
  const start = (name: BrokerName): Promise<StartedBroker> => {
    let server = starting.get(name)
    if (server === undefined) {
      // stopOnExit: also stopped by a watchdog if the runner is killed outright.
      server = startBroker(name, {
        stopOnExit: true,
        log: (line) => process.stderr.write(`[global-setup] ${line}\n`),
      })
      server.then(
        (started) => {
          process.env[brokerEnv[name]] = started.url
        },
        (error: unknown) =>
          process.stderr.write(`[global-setup] ${name} could not be started: ${String(error)}\n`),
      )
      starting.set(name, server)
    }
    return server
  }

  const endpoint = createServer((request, response) => {
    const name = (request.url ?? '').slice(1) as BrokerName
    if (!brokerNames.includes(name)) {
      response.writeHead(404).end(`unknown broker "${name}"`)
      return
    }
    const given = fromEnv(name)
    const url =
      given === undefined ? start(name).then((server) => server.url) : Promise.resolve(given)
    url.then(
      (value) => response.writeHead(200, { 'content-type': 'text/plain' }).end(value),
      (error: unknown) =>
        response
          .writeHead(503, { 'content-type': 'text/plain' })
          .end(error instanceof Error ? error.message : String(error)),
    )
  })
  const port = await listenOnLoopback(endpoint)
  // Keep-alive sockets from the workers must not hold the teardown up.
  endpoint.keepAliveTimeout = 1_000
  project.provide('breakwaterBrokers', `http://127.0.0.1:${port}`)

  if (wholeSuite(process.argv)) {
    for (const name of brokerNames)
      if (fromEnv(name) === undefined) void start(name).catch(() => {})
  }

  return async () => {
    endpoint.closeAllConnections()
    await new Promise<void>((resolve) => endpoint.close(() => resolve()))
    await Promise.all(
      [...starting.values()].map((server) =>
        server.then(
          (started) => {
            delete process.env[brokerEnv[started.service]]
            return started.stop()
          },
          () => {},
        ),
      ),
    )
  }
}
