// Starts and runs the shop: the databases (migrated once, as a deployment would), the proxy,
// and every service as its own Node.js process on a free loopback port. The demo process keeps
// the handles: it kills and restarts processes and sets their chaos for the chaos controls,
// and reads every database for the figures.
import { type ChildProcess, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { openDatabase, type SqlDriver } from 'breakwater/stores'
import { migrateQueue, migrateService, type StoreOwner, storeOwners } from './domain/schema.js'
import { envNames } from './lib/env.js'
import { exitReason } from './lib/exit-reason.js'
import type { ChaosSettings } from './lib/host.js'
import { type ShopProxy, startShopProxy } from './proxy.js'

/** The processes of the shop, and the database each works on. */
export const processSpecs = [
  { name: 'legacy', entry: 'legacy', db: 'legacy', kind: 'service' },
  { name: 'orders', entry: 'orders', db: 'orders', kind: 'service' },
  { name: 'inventory', entry: 'inventory', db: 'inventory', kind: 'service' },
  { name: 'payments', entry: 'payments', db: 'payments', kind: 'service' },
  { name: 'shipping', entry: 'shipping', db: 'shipping', kind: 'service' },
  { name: 'notifications', entry: 'notifications', db: 'notifications', kind: 'service' },
  { name: 'relay', entry: 'relay', db: 'orders', kind: 'worker' },
  { name: 'saga-worker-1', entry: 'saga-worker', db: 'orders', kind: 'worker' },
  { name: 'saga-worker-2', entry: 'saga-worker', db: 'orders', kind: 'worker' },
] as const satisfies readonly {
  name: string
  entry: string
  db: StoreOwner
  kind: 'service' | 'worker'
}[]

/** A process name. */
export type ProcessName = (typeof processSpecs)[number]['name']

/** Options of {@link startShop}. */
export interface ShopOptions {
  /** A PostgreSQL URL for every service's store; SQLite files in a temp folder when absent. */
  readonly db?: string | undefined
  /** A NATS, RabbitMQ or Redis URL; the SQL queue (in the database) when absent. */
  readonly broker?: string | undefined
  /** Safety nets to switch off (`payments-idempotency`), to prove the checker catches it. */
  readonly breaks?: readonly string[]
  /** Share of `/orders` the strangler sends to the new service at start (0..100). */
  readonly newOrdersShare: number
  /** Run without the proxy even when it is available (in-process policies). */
  readonly noProxy?: boolean
  /** Receives progress lines. */
  readonly log: (line: string) => void
  /**
   * Receives, before anything is created, a function that abandons the start where it stands:
   * kills the processes started so far and removes the temporary folder, synchronously (for a
   * signal handler about to exit; the shop's own `abandon` does it once it is up).
   */
  readonly onAbandonable?: (abandon: () => void) => void
}

/** One running (or downed) process. */
export interface ShopProcess {
  readonly name: ProcessName
  readonly kind: 'service' | 'worker'
  readonly port: number
  readonly url: string
  child: ChildProcess | undefined
  /** True while the process runs (false after a kill until its restart). */
  up: boolean
  restarts: number
}

/** The running shop. */
export interface Shop {
  readonly processes: ReadonlyMap<ProcessName, ShopProcess>
  /** The services' databases, opened by the demo process to count the figures. */
  readonly dbs: Readonly<Record<StoreOwner, SqlDriver>>
  readonly proxy: ShopProxy | undefined
  /** `sqlite` or `postgres`, and the broker in use (`sql-queue`, `nats`...). */
  readonly engines: { readonly db: string; readonly broker: string }
  /** Kills a process (SIGKILL: a crash, nothing cleaned up). */
  kill(name: ProcessName): Promise<void>
  /** Starts a killed process again on the same port. */
  restart(name: ProcessName): Promise<void>
  /** Sets a process's chaos (absent fields: no chaos of that kind). */
  chaos(name: ProcessName, settings: Partial<ChaosSettings>): Promise<void>
  /** Stops everything and deletes the temporary files. */
  close(): Promise<void>
  /**
   * Synchronously kills every process (SIGKILL) and deletes the temporary files: for a demo
   * process about to exit where it stands, which cannot wait for {@link Shop.close}.
   */
  abandon(): void
}

// Ports for the services, below Linux's ephemeral range (32768-60999): the ports the kernel hands
// out for outgoing connections and `listen(0)` never land there, so a port that is free now
// stays free while a service is down and comes back on it (chaos restarts).
const portRange = { from: 20_000, to: 32_000 }

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer()
    server.once('error', () => resolve(false))
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)))
  })
}

async function freePort(taken: ReadonlySet<number>): Promise<number> {
  for (;;) {
    const port = portRange.from + Math.floor(Math.random() * (portRange.to - portRange.from))
    if (!taken.has(port) && (await canListen(port))) return port
  }
}

/** The PostgreSQL schemas the shop creates and owns: one per store, and the SQL queue's. */
export const shopSchemas: readonly string[] = [...storeOwners, 'queue'].map((o) => `shop_${o}`)

/**
 * Claims the database for one shop demo, on `admin`'s connection (a pool of one connection
 * that never closes it while idle): a session advisory lock, held until that connection
 * closes (the shop's close, or the demo process's end, whatever ends it). Rejects when another
 * demo holds it: the run about to replace the shop_* schemas would drop them under that
 * demo's running services (its DROP SCHEMA ended in a deadlock, or took their tables away).
 */
export async function claimShopDatabase(admin: SqlDriver): Promise<void> {
  const [row] = await admin.query<{ claimed: boolean }>(
    "SELECT pg_try_advisory_lock(hashtext('breakwater shop demo')) AS claimed",
  )
  if (row?.claimed !== true)
    throw new Error(
      'another shop demo is running on this database (it owns the shop_* schemas until it ends): wait for it to end, or give --db another database',
    )
}

/**
 * Replaces the shop's schemas ({@link shopSchemas}) with empty ones, in one transaction. The
 * shop owns them: a run that found an earlier run's rows would count its orders in its figures,
 * and its pending outbox events, published to that run's topic, would never be consumed. A
 * `DROP SCHEMA ... CASCADE` also drops what depends on their objects elsewhere (a view on one
 * of their tables); no other schema is named.
 */
export async function prepareShopSchemas(db: SqlDriver): Promise<void> {
  await db.transaction(async (tx) => {
    for (const schema of shopSchemas) {
      await tx.execute(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)
      await tx.execute(`CREATE SCHEMA ${schema}`)
    }
  })
}

const servicesDir = fileURLToPath(new URL('./services/', import.meta.url))

/**
 * Starts the shop: databases, proxy, services; resolves when every process is ready. If it
 * fails, whatever it had started (databases, proxy, processes) is stopped and its temporary
 * folder removed before it rejects, with an error that names the step that failed
 * (`migrating the payments store failed: ...`) and has the original error as its cause.
 */
export async function startShop(options: ShopOptions): Promise<Shop> {
  const dir = mkdtempSync(join(tmpdir(), 'breakwater-shop-'))
  // The processes started and not yet exited: what an abandon kills, during the start or after.
  const spawned = new Set<ChildProcess>()
  const abandon = (): void => {
    for (const child of spawned) child.kill('SIGKILL')
    rmSync(dir, { recursive: true, force: true })
  }
  options.onAbandonable?.(abandon)
  // What the preparation opened, closed in reverse if a later step fails.
  const opened: { close(): Promise<void> }[] = []
  let step = 'preparing the stores'
  try {
    return await startPrepared(options, dir, opened, { spawned, abandon }, (what) => {
      step = what
    })
  } catch (error) {
    for (const resource of opened.reverse()) await resource.close().catch(() => {})
    rmSync(dir, { recursive: true, force: true })
    throw new Error(`${step} failed: ${messageOf(error)}`, { cause: error })
  }
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message || error.name : String(error)
}

async function startPrepared(
  options: ShopOptions,
  dir: string,
  opened: { close(): Promise<void> }[],
  started: { readonly spawned: Set<ChildProcess>; readonly abandon: () => void },
  at: (step: string) => void,
): Promise<Shop> {
  // Opens a database that is closed again if the start fails before the shop is up.
  const open = async (url: string, settings?: Parameters<typeof openDatabase>[1]) => {
    const db = await openDatabase(url, settings)
    opened.push(db)
    return db
  }
  const closeNow = async (db: SqlDriver): Promise<void> => {
    opened.splice(opened.indexOf(db), 1)
    await db.close()
  }
  // Every service its own store: a SQLite file each, or on PostgreSQL a schema each in the
  // given database (the connection's search_path selects it, so the code is the same).
  const dbUrl = (owner: StoreOwner | 'queue'): string =>
    options.db === undefined
      ? `sqlite:${join(dir, `${owner}.db`)}`
      : shopStoreUrl(options.db, owner)
  // On PostgreSQL, the connection that holds the database for this run until the shop closes.
  let claim: SqlDriver | undefined
  if (options.db !== undefined) {
    at('claiming the database')
    claim = await open(options.db, { postgres: { maxConnections: 1, idleTimeoutMs: 0 } })
    await claimShopDatabase(claim)
    // Each run starts from empty stores (see prepareShopSchemas).
    at("replacing the stores' schemas")
    await prepareShopSchemas(claim)
  }

  // Migrations first, from this process, before any service runs (the orders service, its
  // relay and its saga workers share a store, and must not race to create the same tables).
  const dbs = {} as Record<StoreOwner, SqlDriver>
  for (const owner of storeOwners) {
    at(`migrating the ${owner} store`)
    const db = await open(dbUrl(owner), { postgres: { maxConnections: 2 } })
    await migrateService(owner, db)
    dbs[owner] = db
  }
  if (options.broker === undefined) {
    at('migrating the SQL queue')
    const queueDb = await open(dbUrl('queue'))
    await migrateQueue(queueDb)
    await closeNow(queueDb)
  }

  at("choosing the services' ports")

  const ports = new Map<ProcessName, number>()
  for (const spec of processSpecs) ports.set(spec.name, await freePort(new Set(ports.values())))
  const peers: Record<string, string> = {}
  for (const spec of processSpecs)
    if (spec.kind === 'service') peers[spec.name] = `http://127.0.0.1:${ports.get(spec.name)}`

  at('starting the proxy')
  const proxy = options.noProxy
    ? undefined
    : await startShopProxy(
        Object.fromEntries(Object.entries(peers).filter(([name]) => name !== 'notifications')),
        options.newOrdersShare,
        options.log,
      )
  if (proxy !== undefined) opened.push(proxy)
  // A fresh topic per run: a shared broker server (tests) never mixes two runs' events.
  const topic = `shop_${Date.now().toString(36)}${randomBytes(3).toString('hex')}_orders`

  const processes = new Map<ProcessName, ShopProcess>()
  for (const spec of processSpecs) {
    const port = ports.get(spec.name)!
    processes.set(spec.name, {
      name: spec.name,
      kind: spec.kind,
      port,
      url: `http://127.0.0.1:${port}`,
      child: undefined,
      up: false,
      restarts: 0,
    })
  }

  const envOf = (spec: (typeof processSpecs)[number]): NodeJS.ProcessEnv => ({
    ...process.env,
    [envNames.name]: spec.name,
    [envNames.port]: String(ports.get(spec.name)),
    [envNames.dbUrl]: dbUrl(spec.db),
    [envNames.brokerUrl]: options.broker ?? 'sql',
    [envNames.queueDbUrl]: dbUrl('queue'),
    [envNames.topic]: topic,
    [envNames.peers]: JSON.stringify(peers),
    [envNames.ambassadorUrl]: proxy?.ambassadorUrl ?? '',
    [envNames.breaks]: (options.breaks ?? []).join(','),
  })

  let closing = false
  const launch = (spec: (typeof processSpecs)[number]): Promise<void> => {
    const entry = processes.get(spec.name)!
    const child = spawn(process.execPath, [join(servicesDir, `${spec.entry}.js`)], {
      env: envOf(spec),
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
      // Their own process group: Ctrl-C in the terminal reaches the demo process only, which
      // then settles the system before stopping it. A service exits by itself if the demo
      // process dies (its IPC channel closes).
      detached: true,
    })
    entry.child = child
    started.spawned.add(child)
    child.once('exit', () => started.spawned.delete(child))
    // The start of stderr holds an uncaught error's own line; the end, whatever came last.
    let head = ''
    let tail = ''
    child.stderr?.on('data', (chunk: Buffer) => {
      const text = chunk.toString()
      if (head.length < 8_000) head += text.slice(0, 8_000 - head.length)
      tail = (tail + text).slice(-4_000)
    })
    const reason = (): string => exitReason(`${head}\n${tail}`)
    return new Promise((resolve, reject) => {
      child.on('message', (message: { type?: string }) => {
        if (message.type === 'ready') {
          entry.up = true
          resolve()
        }
      })
      child.once('exit', (code, signal) => {
        entry.up = false
        if (entry.child === child) entry.child = undefined
        if (!closing && signal !== 'SIGKILL')
          options.log(`${spec.name} exited (${signal ?? code}): ${reason()}`)
        reject(new Error(`${spec.name} exited before it was ready: ${reason()}`))
      })
    })
  }

  const specOf = (name: ProcessName) => processSpecs.find((s) => s.name === name)!
  const shop: Shop = {
    processes,
    dbs,
    proxy,
    engines: {
      db: options.db === undefined ? 'sqlite' : 'postgres',
      broker: options.broker === undefined ? 'sql-queue' : options.broker.split(':')[0]!,
    },
    kill: async (name) => {
      const entry = processes.get(name)!
      const child = entry.child
      if (child === undefined) return
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill('SIGKILL')
      await exited
    },
    restart: async (name) => {
      const entry = processes.get(name)!
      if (entry.child !== undefined) return
      entry.restarts++
      await launch(specOf(name))
    },
    chaos: async (name, settings) => {
      const entry = processes.get(name)!
      if (!entry.up) return
      await fetch(`${entry.url}/_admin/chaos`, {
        method: 'POST',
        body: JSON.stringify(settings),
        signal: AbortSignal.timeout(2_000),
      })
    },
    close: async () => {
      closing = true
      const children = [...processes.values()].flatMap((p) => (p.child ? [p.child] : []))
      await Promise.all(
        children.map(
          (child) =>
            new Promise<void>((resolve) => {
              child.once('exit', () => resolve())
              child.kill('SIGTERM')
              // A process stuck in its shutdown is not waited for long.
              setTimeout(() => child.kill('SIGKILL'), 3_000).unref()
            }),
        ),
      )
      await proxy?.close()
      for (const db of Object.values(dbs)) await db.close()
      await claim?.close()
      rmSync(dir, { recursive: true, force: true })
    },
    abandon: () => {
      closing = true
      started.abandon()
    },
  }
  at('starting the processes')
  try {
    await Promise.all(processSpecs.map(launch))
  } catch (error) {
    // One process failed to start: stop the others, and the proxy, before reporting it
    // (shop.close() also closes the databases and removes the folder).
    opened.length = 0
    await shop.close()
    throw error
  }
  return shop
}

/**
 * The URL of one service's store in the PostgreSQL database `db` (the demo's `--db`): the same
 * database, its `shop_<owner>` schema selected by the connection's `search_path`. Options the
 * URL already gives the server (`options=-c statement_timeout=...`) are kept, the search_path
 * added after them: a second `options` parameter would be read instead of the user's.
 */
export function shopStoreUrl(db: string, owner: StoreOwner | 'queue'): string {
  const at = db.indexOf('?')
  const base = at < 0 ? db : db.slice(0, at)
  const params = new URLSearchParams(at < 0 ? '' : db.slice(at + 1))
  const searchPath = `-c search_path=shop_${owner}`
  const given = params.get('options')
  params.set(
    'options',
    given === null || given.trim() === '' ? searchPath : `${given} ${searchPath}`,
  )
  return `${base}?${params.toString()}`
}
