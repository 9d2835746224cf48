// What the demo process tells each service process, through environment variables. One place
// reads them, so every service starts the same way.

/** The settings one service process runs with. */
export interface ShopEnv {
  /** The process's name: `payments`, `saga-worker-1`, ... */
  readonly name: string
  /** The loopback port its HTTP server (API, or only the admin endpoint) listens on. */
  readonly port: number
  /** The service's own database: `sqlite:/tmp/.../payments.db` or `postgres://...`. */
  readonly dbUrl: string
  /** The message broker: `sql` (the SQL queue in {@link queueDbUrl}) or a broker URL. */
  readonly brokerUrl: string
  /** The database holding the SQL queue when {@link brokerUrl} is `sql`. */
  readonly queueDbUrl: string
  /** The topic the orders service's events are published on. */
  readonly topic: string
  /** Base URLs of the other services, for direct calls when no ambassador runs. */
  readonly peers: Readonly<Record<string, string>>
  /** The breakwater proxy's ambassador listener, when the proxy runs. */
  readonly ambassadorUrl: string | undefined
  /** Safety nets deliberately switched off (`payments-idempotency`), to prove the checker. */
  readonly breaks: ReadonlySet<string>
}

/** Environment variables the demo process sets for a service process. */
export const envNames = {
  name: 'SHOP_NAME',
  port: 'SHOP_PORT',
  dbUrl: 'SHOP_DB_URL',
  brokerUrl: 'SHOP_BROKER_URL',
  queueDbUrl: 'SHOP_QUEUE_DB_URL',
  topic: 'SHOP_TOPIC',
  peers: 'SHOP_PEERS',
  ambassadorUrl: 'SHOP_AMBASSADOR_URL',
  breaks: 'SHOP_BREAK',
} as const

function required(name: string): string {
  const value = process.env[name]
  if (value === undefined || value === '') throw new Error(`${name} is not set`)
  return value
}

/** Reads the settings of this service process from its environment. */
export function readShopEnv(): ShopEnv {
  const ambassador = process.env[envNames.ambassadorUrl]
  return {
    name: required(envNames.name),
    port: Number(required(envNames.port)),
    dbUrl: required(envNames.dbUrl),
    brokerUrl: process.env[envNames.brokerUrl] ?? 'sql',
    queueDbUrl: process.env[envNames.queueDbUrl] ?? '',
    topic: process.env[envNames.topic] ?? 'shop.orders',
    peers: JSON.parse(process.env[envNames.peers] ?? '{}') as Record<string, string>,
    ambassadorUrl: ambassador === undefined || ambassador === '' ? undefined : ambassador,
    breaks: new Set((process.env[envNames.breaks] ?? '').split(',').filter((b) => b !== '')),
  }
}
