// Broker servers for tests. One server of each kind per vitest run, started by the global setup
// (RabbitMQ takes seconds to boot; NATS and Redis are cheap but sharing them costs nothing,
// since every test uses its own topics and groups). Tests that stop or crash a server get a
// private one from startPrivateBroker() so they never disturb the shared ones.
import { inject } from 'vitest'
import { type BrokerName, type StartedBroker, startBroker } from '../../scripts/lib/brokers.mjs'

export type { BrokerName, StartedBroker } from '../../scripts/lib/brokers.mjs'

declare module 'vitest' {
  export interface ProvidedContext {
    /** URL of the run's NATS JetStream server, when it runs. */
    breakwaterNatsUrl: string | undefined
    /** Why the run's NATS server is not available. */
    breakwaterNatsError: string | undefined
    /** URL of the run's Redis server, when it runs. */
    breakwaterRedisUrl: string | undefined
    /** Why the run's Redis server is not available. */
    breakwaterRedisError: string | undefined
    /** URL of the run's RabbitMQ server, when it runs. */
    breakwaterRabbitmqUrl: string | undefined
    /** Why the run's RabbitMQ server is not available. */
    breakwaterRabbitmqError: string | undefined
  }
}

/** The environment variable that can name an already running server (also for child processes). */
export const brokerEnv: Readonly<Record<BrokerName, string>> = {
  nats: 'BREAKWATER_TEST_NATS_URL',
  redis: 'BREAKWATER_TEST_REDIS_URL',
  rabbitmq: 'BREAKWATER_TEST_RABBITMQ_URL',
}

const provided = {
  nats: () => [inject('breakwaterNatsUrl'), inject('breakwaterNatsError')] as const,
  redis: () => [inject('breakwaterRedisUrl'), inject('breakwaterRedisError')] as const,
  rabbitmq: () => [inject('breakwaterRabbitmqUrl'), inject('breakwaterRabbitmqError')] as const,
}

// Servers this test file had to start itself because no global setup provided one.
const ownServers = new Map<BrokerName, Promise<StartedBroker>>()

/**
 * The URL of the run's shared `name` server: from the global setup, else from its environment
 * variable, else a server started for this test file (stopped by {@link stopOwnBrokers}, or
 * when the worker exits). Throws, failing the test, when the global setup could not start it.
 */
export async function brokerUrl(name: BrokerName): Promise<string> {
  const [url, error] = provided[name]()
  if (url !== undefined && url !== '') return url
  const fromEnv = process.env[brokerEnv[name]]
  if (fromEnv !== undefined && fromEnv !== '') return fromEnv
  if (error !== undefined) {
    throw new Error(`${name} is needed by this test but is not available: ${error}`)
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
 * also killed if the worker exits first.
 */
export function startPrivateBroker(name: BrokerName): Promise<StartedBroker> {
  return startBroker(name, { stopOnExit: true })
}
