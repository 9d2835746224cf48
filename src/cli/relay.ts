import { readFileSync } from 'node:fs'
import {
  type BrokerTlsOptions,
  createWebhookPublisher,
  type OutgoingMessage,
  openBroker,
  type Publisher,
} from '../brokers/index.js'
import { type Clock, maxTimerDelayMs, systemClock } from '../core/clock.js'
import { BreakwaterError } from '../core/errors.js'
import { maskQueryValues } from '../core/query-keys.js'
import type { CircuitState } from '../index.js'
import {
  createJsonLogger,
  createMetricsRegistry,
  type Logger,
  type LogThreshold,
  redactSecrets,
} from '../observability/index.js'
import {
  crashAtFromEnv,
  createRelay,
  createSqlQueue,
  type OutboxStats,
  outboxMigrations,
  outboxPartitionsTable,
  outboxStats,
  type Relay,
  type RelayOptions,
  sqlQueueMigrations,
} from '../outbox/index.js'
import type { SqlDriver } from '../stores/index.js'
import {
  badDatabaseArgument,
  inMemoryRefusal,
  isInMemoryDatabase,
  openExistingDatabase,
} from './existing-database.js'
import {
  type LongRunningCommandDeps,
  openMigratedDatabase,
  requireMigrations,
  runLongRunningCommand,
  type ServiceResources,
  serveMetrics,
} from './long-running.js'
import { type PeriodicRead, periodicRead } from './periodic-read.js'
import {
  checkDatabaseUrl,
  databaseUrl,
  flagOrEnv,
  integerFlag,
  logLevelFlag,
  metricsFlags,
  readFlags,
  type Setting,
  StartupError,
} from './process-support.js'
import {
  type BrokerSettings,
  brokerSettingFlags,
  brokerSettingRefusal,
  brokerSettingsHelp,
  parseBrokerSettings,
} from './relay-broker-settings.js'
import {
  type BrokerTlsArgs,
  brokerTlsEnvironmentHelp,
  brokerTlsOption,
  brokerTlsOptionsHelp,
  brokerTlsRefusal,
  brokerTlsValueFlags,
  parseBrokerTls,
  passphraseArgumentFlags,
  passphraseFlagsHint,
} from './relay-broker-tls.js'
import { maskedUrl, messageOf, oneLine, UsageError, wantsHelp } from './usage.js'

/**
 * What `relayCommand` needs besides its arguments; the webhook secret, the broker key's
 * passphrase and `BREAKWATER_CRASH_AT` come from `env`.
 */
export type RelayCommandDeps = LongRunningCommandDeps

const defaultDb = 'sqlite:./.breakwater/breakwater.db'
const defaultSecretEnv = 'BREAKWATER_WEBHOOK_SECRET'
const defaultStatsIntervalMs = 15_000

const usage = `usage: breakwater relay [options]

Publishes the outbox's events to a broker until SIGTERM or SIGINT, then finishes the batch in
hand and exits 0; SIGHUP is logged and ignored (nothing to reload). Exits 1 if another process
takes its --relay-id over (RELAY_ID_IN_USE).
Logs JSON lines to stdout. Run \`breakwater migrate --db <url>\` first.

options:
  --db <url>                 the database holding the outbox: sqlite:<file> or
                             postgres://user@host/db (default ${defaultDb})
  --broker <url>             where events go (default sql:):
                               sql:                       the SQL queue in the --db database
                               sqlite:<file>, postgres://  the SQL queue in that database
                               nats://host:port           NATS JetStream
                               tls://host:port            NATS JetStream over TLS
                               amqp://, amqps://          RabbitMQ
                               redis://, rediss://        Redis Streams
                               http://, https://          a webhook (signed POSTs)
                             the consumers must open the broker with the same exchange or
                             stream: see --rabbitmq-exchange and --nats-stream
  --metrics-port <n>         serve Prometheus /metrics and /healthz on this port (0: any free
                             port, logged at start; default: no server)
  --metrics-host <host>      the metrics server's address, with --metrics-port (default
                             127.0.0.1)
  --stats-interval-ms <n>    least time between two reads of the whole-outbox figures for
                             /metrics (they scan the pending rows), with --metrics-port
                             (default 15000; 0: at each scrape, one at a time)
  --batch-size <n>           most events confirmed and not yet marked published (what a
                             crash can publish twice); a round reads half, 1-10000
                             (default 256)
  --topic-prefix <text>      prepended to every event's topic
  --ordering <mode>          confirmed (default) or batch
  --max-attempts <n>         failed attempts before an event is dead-lettered (default 10)
  --max-payload-bytes <n>    largest payload published, in bytes of JSON; a larger one is
                             dead-lettered unpublished (default 1048576: 1 MiB, as the
                             outbox's maxPayloadBytes; keep the two equal)
  --max-backoff-ms <n>       longest wait between failed rounds (default 30000)
  --breaker-cooldown-ms <n>  how long the broker's circuit stays open (default 5000)
  --lease-ms <n>             partition lease length (default 10000)
  --relay-id <id>            this relay's id in the lease tables (default: random)
  --drain-timeout-ms <n>     how long a graceful stop may take (default 30000)
  --log-level <level>        debug, info (default), warn, error or silent
  --webhook-secret-env <var> environment variable holding the webhook signing secret
                             (default ${defaultSecretEnv})
  --webhook-secret-file <f>  file holding the webhook signing secret
  --webhook-batch            one POST per batch instead of one per event
${brokerSettingsHelp}${brokerTlsOptionsHelp}
environment:
  BREAKWATER_DB_URL, BREAKWATER_BROKER_URL
                             used when --db or --broker is not given: arguments show in ps
                             and shell history, so URLs with passwords belong here (or use
                             PGPASSWORD with PostgreSQL)
${brokerTlsEnvironmentHelp}  BREAKWATER_CRASH_AT        relay:<fault point>[:<n>]: SIGKILL itself there (crash tests)

The webhook secret and the key's passphrase are never taken from arguments. Passwords are
never logged.
`

/** The broker a `--broker` URL names. */
type BrokerSpec =
  | { readonly kind: 'sql'; readonly url: string | undefined }
  | { readonly kind: 'nats' | 'rabbitmq' | 'redis'; readonly url: string }
  | { readonly kind: 'webhook'; readonly url: string }

interface RelayArgs {
  readonly db: string
  readonly broker: BrokerSpec
  readonly brokerText: string
  /** Where the broker URL came from, for messages: `--broker` or `BREAKWATER_BROKER_URL`. */
  readonly brokerSource: string
  readonly metricsPort: number | undefined
  readonly metricsHost: string
  readonly statsIntervalMs: number
  readonly batchSize: number | undefined
  readonly topicPrefix: string | undefined
  readonly ordering: 'confirmed' | 'batch' | undefined
  readonly maxAttempts: number | undefined
  readonly maxPayloadBytes: number | undefined
  readonly maxBackoffMs: number | undefined
  readonly breakerCooldownMs: number | undefined
  readonly leaseMs: number | undefined
  readonly relayId: string | undefined
  readonly drainTimeoutMs: number
  readonly logLevel: LogThreshold
  readonly secretEnv: string
  /** Whether --webhook-secret-env named `secretEnv` (else it is the default variable). */
  readonly secretEnvGiven: boolean
  readonly secretFile: string | undefined
  readonly webhookBatch: boolean
  /** The broker's TLS files and passphrase source; undefined when none is given. */
  readonly brokerTls: BrokerTlsArgs | undefined
  /** The adapter's exchange or stream, from `--rabbitmq-exchange`, `--nats-stream`... */
  readonly brokerSettings: BrokerSettings
  /** The flags as given, for the adapter's refusal of a value of `brokerSettings`'s. */
  readonly brokerSettingValues: ReadonlyMap<string, string>
}

const valueFlags = new Set([
  '--db',
  '--broker',
  '--metrics-port',
  '--metrics-host',
  '--stats-interval-ms',
  '--batch-size',
  '--topic-prefix',
  '--ordering',
  '--max-attempts',
  '--max-payload-bytes',
  '--max-backoff-ms',
  '--breaker-cooldown-ms',
  '--lease-ms',
  '--relay-id',
  '--drain-timeout-ms',
  '--log-level',
  '--webhook-secret-env',
  '--webhook-secret-file',
  ...brokerTlsValueFlags,
  ...brokerSettingFlags,
])
const booleanFlags = new Set(['--webhook-batch'])
/** Flags that would carry a secret, refused with how to give it instead. */
const secretFlags = new Map([
  ...['--webhook-secret', '--secret', '--password', '--token'].map(
    (flag) => [flag, 'use --webhook-secret-env or --webhook-secret-file'] as const,
  ),
  ...passphraseArgumentFlags.map((flag) => [flag, passphraseFlagsHint] as const),
])

/** Parses `--broker` (or `BREAKWATER_BROKER_URL`); the error never shows a password. */
function parseBroker({ value: text, source }: Setting, dbUrl: string): BrokerSpec {
  // Refused here, the query is not what is wrong: no value of it is shown (a credential may
  // sit under any name, ?pass= or ?token=), only its names.
  const shown = redactSecrets(maskQueryValues(text, () => true, /[&#]/g))
  if (text === 'sql' || text === 'sql:' || text === 'sql://') return { kind: 'sql', url: undefined }
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(text)?.[1]?.toLowerCase()
  switch (scheme) {
    case 'sqlite':
    case 'postgres':
    case 'postgresql':
      checkDatabaseUrl(text, source)
      if (isInMemoryDatabase(text)) throw new UsageError(`${source}: ${inMemoryRefusal}`)
      return { kind: 'sql', url: text === dbUrl ? undefined : text }
    case 'nats':
    case 'tls':
    case 'amqp':
    case 'amqps':
    case 'redis':
    case 'rediss':
    case 'http':
    case 'https': {
      let url: URL
      try {
        url = new URL(text)
      } catch {
        throw new UsageError(`${source}: not a valid URL: "${shown}"`)
      }
      if (url.hostname === '') throw new UsageError(`${source}: the URL names no host: "${shown}"`)
      if (scheme === 'http' || scheme === 'https') return { kind: 'webhook', url: text }
      const kind =
        scheme === 'nats' || scheme === 'tls'
          ? 'nats'
          : scheme.startsWith('amqp')
            ? 'rabbitmq'
            : 'redis'
      return { kind, url: text }
    }
    default:
      throw new UsageError(
        `${source}: unsupported broker "${shown}"; expected sql:, sqlite:<file>, postgres://, nats://, tls://, amqp://, amqps://, redis://, rediss://, http:// or https://`,
      )
  }
}

function parse(
  args: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
): RelayArgs {
  const { values, flags } = readFlags(args, valueFlags, booleanFlags, (flag) => {
    const hint = secretFlags.get(flag)
    if (hint !== undefined)
      throw new UsageError(
        `${flag}: secrets are not accepted as arguments (they show in ps and shell history); ${hint}`,
      )
  })

  const db = databaseUrl(values, env, defaultDb)
  const brokerSetting = flagOrEnv(values, '--broker', env, 'BREAKWATER_BROKER_URL', 'sql:')
  const brokerText = brokerSetting.value
  const broker = parseBroker(brokerSetting, db)
  const brokerTls = parseBrokerTls(values, env, {
    // Only `sql` has no colon.
    scheme: /^[a-z][a-z0-9+.-]*:(\/\/)?/i.exec(brokerText)?.[0].toLowerCase() ?? 'sql:',
    webhook: broker.kind === 'webhook',
    source: brokerSetting.source,
  })
  const brokerSettings = parseBrokerSettings(values, broker.kind)
  const ordering = values.get('--ordering')
  if (ordering !== undefined && ordering !== 'confirmed' && ordering !== 'batch')
    throw new UsageError(
      `--ordering must be "confirmed" or "batch", got "${redactSecrets(ordering)}"`,
    )
  const logLevel = logLevelFlag(values.get('--log-level'))
  const metrics = metricsFlags(values)
  if (values.has('--stats-interval-ms') && metrics.port === undefined)
    throw new UsageError('--stats-interval-ms applies only with --metrics-port')
  const topicPrefix = values.get('--topic-prefix')
  if (topicPrefix !== undefined && !/^[\x21-\x7e]+$/.test(topicPrefix))
    throw new UsageError('--topic-prefix must be visible ASCII characters (no spaces)')
  const secretEnv = values.get('--webhook-secret-env') ?? defaultSecretEnv
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(secretEnv))
    // Not shown: what is no variable name may be the secret itself.
    throw new UsageError(
      '--webhook-secret-env must name an environment variable (letters, digits and _), not hold the secret',
    )
  const secretFile = values.get('--webhook-secret-file')
  const webhookBatch = flags.has('--webhook-batch')
  if (broker.kind !== 'webhook') {
    for (const flag of ['--webhook-secret-env', '--webhook-secret-file'])
      if (values.has(flag)) throw new UsageError(`${flag} applies only to an http(s):// --broker`)
    if (webhookBatch) throw new UsageError('--webhook-batch applies only to an http(s):// --broker')
  }
  const relayId = values.get('--relay-id')
  if (relayId !== undefined && !/^[\x21-\x7e]{1,200}$/.test(relayId))
    throw new UsageError('--relay-id must be 1 to 200 visible ASCII characters')
  return {
    db,
    broker,
    brokerText,
    brokerSource: brokerSetting.source,
    metricsPort: metrics.port,
    metricsHost: metrics.host,
    statsIntervalMs:
      integerFlag('--stats-interval-ms', values.get('--stats-interval-ms'), 0, maxTimerDelayMs) ??
      defaultStatsIntervalMs,
    batchSize: integerFlag('--batch-size', values.get('--batch-size'), 1, 10_000),
    topicPrefix,
    ordering: ordering as RelayArgs['ordering'],
    maxAttempts: integerFlag('--max-attempts', values.get('--max-attempts'), 1, 1_000_000),
    maxPayloadBytes: integerFlag(
      '--max-payload-bytes',
      values.get('--max-payload-bytes'),
      1,
      Number.MAX_SAFE_INTEGER,
    ),
    maxBackoffMs: integerFlag(
      '--max-backoff-ms',
      values.get('--max-backoff-ms'),
      1,
      maxTimerDelayMs,
    ),
    breakerCooldownMs: integerFlag(
      '--breaker-cooldown-ms',
      values.get('--breaker-cooldown-ms'),
      1,
      maxTimerDelayMs,
    ),
    leaseMs: integerFlag('--lease-ms', values.get('--lease-ms'), 30, maxTimerDelayMs),
    relayId,
    drainTimeoutMs:
      integerFlag('--drain-timeout-ms', values.get('--drain-timeout-ms'), 0, maxTimerDelayMs) ??
      30_000,
    logLevel,
    secretEnv,
    secretEnvGiven: values.has('--webhook-secret-env'),
    secretFile,
    webhookBatch,
    brokerTls,
    brokerSettings,
    brokerSettingValues: values,
  }
}

/** Reads the webhook secret from its file or environment variable; never from arguments. */
function webhookSecret(args: RelayArgs, env: Readonly<Record<string, string | undefined>>): string {
  let secret: string | undefined
  if (args.secretFile !== undefined) {
    try {
      secret = readFileSync(args.secretFile, 'utf8').replace(/\r?\n$/, '')
    } catch (error) {
      throw new UsageError(
        `--webhook-secret-file: cannot read "${args.secretFile}": ${(error as NodeJS.ErrnoException).code ?? 'error'}`,
      )
    }
  } else {
    secret = env[args.secretEnv]
  }
  // A name given with --webhook-secret-env is never shown: it may be the secret itself, put
  // there by mistake (`--webhook-secret-env sk_live_...` looks like a variable name too).
  const variable = args.secretEnvGiven
    ? 'the environment variable that --webhook-secret-env names'
    : `the ${args.secretEnv} environment variable`
  const source = args.secretFile === undefined ? variable : `the file ${args.secretFile}`
  if (secret === undefined || secret === '')
    throw new UsageError(
      args.secretEnvGiven
        ? `a webhook --broker needs a signing secret: ${variable} is not set (or is empty); set it or pass --webhook-secret-file`
        : `a webhook --broker needs a signing secret: set ${args.secretEnv} or pass --webhook-secret-file`,
    )
  if (Buffer.byteLength(secret) < 16)
    throw new UsageError(`the webhook secret from ${source} is shorter than 16 bytes`)
  return secret
}

/**
 * Builds the broker's publisher. The adapter checks the rest of the URL (a Redis path that is
 * no database number, a webhook URL with credentials or a fragment) and reads the TLS files
 * (`tls`, from `parsed.brokerTls`) and checks the exchange or stream `--rabbitmq-exchange` or
 * `--nats-stream` names: its INVALID_OPTION is the user's to fix like a bad argument (exit 2),
 * and the message says where the setting came from (`--broker` or BREAKWATER_BROKER_URL,
 * `--broker-key-file` and its path, `--rabbitmq-exchange`) rather than only the adapter's
 * option name.
 */
function brokerOption<T>(parsed: RelayArgs, tls: BrokerTlsOptions | undefined, build: () => T): T {
  try {
    return build()
  } catch (error) {
    if (BreakwaterError.is(error) && error.code === 'INVALID_OPTION') {
      const message =
        (parsed.brokerTls === undefined || tls === undefined
          ? undefined
          : brokerTlsRefusal(error, parsed.brokerTls, tls)) ??
        brokerSettingRefusal(error, parsed.brokerSettingValues) ??
        `${parsed.brokerSource}: ${error.message}`
      throw new BreakwaterError('INVALID_OPTION', message, { cause: error })
    }
    throw error
  }
}

/**
 * Builds the publisher of a broker outside the database (a webhook, NATS, RabbitMQ, Redis) and
 * registers it in `resources`; undefined for the SQL queue. `secret` is the webhook's, `tls`
 * the adapter's TLS settings (their files are read here).
 */
function externalPublisher(
  resources: ServiceResources,
  parsed: RelayArgs,
  tls: BrokerTlsOptions | undefined,
  secret: string | undefined,
  log: Logger,
): Publisher | undefined {
  const broker = parsed.broker
  if (broker.kind === 'sql') return undefined
  if (broker.kind === 'webhook') {
    const webhook = brokerOption(parsed, tls, () =>
      createWebhookPublisher({
        url: broker.url,
        secret: secret!,
        batch: parsed.webhookBatch,
        // A few quick attempts, then the relay's backoff and circuit breaker take over. They
        // fit in the relay's publish timeout (5 s by default, less with a short --lease-ms):
        // the relay runs each publish under that deadline, which clamps every attempt and
        // ends the retries before a wait would outlast it.
        attemptTimeoutMs: 2_000,
        retry: { maxAttempts: 3, baseDelayMs: 100, maxDelayMs: 500, maxRetryAfterMs: 1_000 },
      }),
    )
    resources.add('webhook publisher', () => webhook.close())
    return webhook
  }
  const opened = brokerOption(parsed, tls, () =>
    openBroker(broker.url, {
      onError: (event) => log.warn('broker error', { phase: event.phase, error: event.error }),
      // The adapter's section (nats, rabbitmq, redis) is named as the broker's kind.
      [broker.kind]: {
        ...parsed.brokerSettings[broker.kind as keyof BrokerSettings],
        ...(tls === undefined ? {} : { tls }),
      },
    }),
  )
  resources.add('broker', () => opened.close())
  return opened.publisher
}

/**
 * The SQL queue's publisher, in the outbox's database `db` (at `dbUrl`) or, given `url`, in
 * that database; registered in `resources`. A queue database that cannot be opened or lacks
 * the queue's migrations is a StartupError; one whose path cannot be a database file (a
 * folder) a UsageError naming where the URL came from. `signal` (the start's) abandons the open.
 */
async function sqlQueuePublisher(
  resources: ServiceResources,
  db: SqlDriver,
  url: string | undefined,
  parsed: RelayArgs,
  env: Readonly<Record<string, string | undefined>>,
  signal: AbortSignal,
): Promise<Publisher> {
  const dbUrl = parsed.db
  let queueDb = db
  if (url !== undefined) {
    try {
      queueDb = await openExistingDatabase(url, {}, { writer: 'the relay', signal })
    } catch (error) {
      if (signal.aborted && error === signal.reason) throw error
      // A path that cannot be a database file (a folder) is a bad argument, as for --db.
      const bad = badDatabaseArgument(error, parsed.brokerSource)
      if (bad !== undefined) throw new UsageError(bad, { cause: error })
      throw new StartupError(`cannot open --broker ${maskedUrl(url)}: ${messageOf(error)}`)
    }
    const opened = queueDb
    resources.add('queue database', () => opened.close())
  }
  // Both databases answered when opened (openExistingDatabase runs a statement).
  await requireMigrations(queueDb, url ?? dbUrl, 'queue', sqlQueueMigrations, env)
  const queue = createSqlQueue(queueDb)
  resources.add('SQL queue', () => queue.close())
  return queue.publisher
}

/** Publishes every message under `prefix + topic`. */
function prefixTopics(publisher: Publisher, prefix: string): Publisher {
  return {
    publish: (messages: readonly OutgoingMessage[], signal?: AbortSignal) =>
      publisher.publish(
        messages.map((m) => ({ ...m, topic: `${prefix}${m.topic}` })),
        signal,
      ),
    close: () => publisher.close(),
  }
}

const breakerStates: readonly CircuitState[] = ['closed', 'open', 'half-open', 'isolated']

/** How {@link relayMetrics} reads the whole-outbox figures. */
export interface OutboxFiguresOptions {
  /** Least time between the starts of two reads, in ms. */
  readonly intervalMs: number
  /** @default systemClock */
  readonly clock?: Clock | undefined
}

/**
 * Metrics of the relay process (internal: exported for tests). The relay's own figures are
 * taken at each scrape; the whole-outbox ones (`outboxStats`, which scans the pending rows: over
 * a second at a million, per scrape per relay) are read in the background at most once per
 * `figures.intervalMs`, never two reads at once, and a scrape serves the last ones read without
 * waiting. `outboxFigures` is that read: its first one starts with the metrics server, and a
 * stop waits for one still running before the database closes.
 */
export function relayMetrics(
  relay: Relay,
  db: SqlDriver,
  log: Logger,
  broker: string,
  figures: OutboxFiguresOptions,
): {
  registry: ReturnType<typeof createMetricsRegistry>
  outboxFigures: PeriodicRead<OutboxStats>
} {
  const outboxFigures = periodicRead(() => outboxStats(db), {
    intervalMs: figures.intervalMs,
    clock: figures.clock ?? systemClock,
    onError: (error) => log.warn('outbox figures could not be read', { error }),
  })
  const registry = createMetricsRegistry({
    onCollectError: (error) => log.warn('metrics collection failed', { error }),
  })
  const published = registry.counter({
    name: 'breakwater_relay_published_total',
    help: 'Events confirmed by the broker and marked published by this relay (rate() gives events/s).',
  })
  const failures = registry.counter({
    name: 'breakwater_relay_publish_failures_total',
    help: 'Failed publish calls (broker down, timeouts, rejected messages).',
  })
  const deadLettered = registry.counter({
    name: 'breakwater_relay_dead_lettered_total',
    help: 'Events this relay moved to the dead-letter state.',
  })
  const batches = registry.counter({
    name: 'breakwater_relay_batches_total',
    help: 'Rounds that published at least one event.',
  })
  const duration = registry.histogram({
    name: 'breakwater_relay_batch_duration_seconds',
    help: 'Time from reading a batch to marking it published.',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
  })
  const outboxLag = registry.gauge({
    name: 'breakwater_outbox_lag_seconds',
    help: 'Age of the oldest unpublished (not dead) event in the whole outbox, 0 when none.',
  })
  const pending = registry.gauge({
    name: 'breakwater_outbox_pending_events',
    help: 'Events not yet published and not dead, in the whole outbox.',
  })
  const dead = registry.gauge({
    name: 'breakwater_outbox_dead_events',
    help: 'Dead-lettered events waiting for `breakwater outbox redrive`.',
  })
  const stranded = registry.gauge({
    name: 'breakwater_outbox_stranded_events',
    help: 'Pending events whose partition_no is outside 0..63 (changed by hand): no relay will publish them; see `breakwater outbox stats`.',
  })
  const statsUp = registry.gauge({
    name: 'breakwater_outbox_stats_up',
    help: '1 when the last read of the outbox figures succeeded, 0 when it failed or none has finished yet (figures are stale or 0).',
  })
  const relayLag = registry.gauge({
    name: 'breakwater_relay_lag_seconds',
    help: "Age of the oldest publishable event in this relay's partitions at its last read.",
  })
  const partitions = registry.gauge({
    name: 'breakwater_relay_owned_partitions',
    help: 'Outbox partitions this relay holds.',
  })
  const breaker = registry.gauge({
    name: 'breakwater_relay_breaker_state',
    help: "1 for the broker circuit breaker's current state, 0 for the others.",
    labelNames: ['state'],
  })
  const info = registry.gauge({
    name: 'breakwater_relay_info',
    help: 'Identity of this relay process.',
    labelNames: ['relay_id', 'broker', 'dialect'],
  })
  info.set({ relay_id: relay.id, broker, dialect: db.dialect }, 1)

  relay.events.on((event) => {
    if (event.type === 'published') {
      published.inc(event.count)
      batches.inc()
      duration.observe(event.durationMs / 1000)
    } else if (event.type === 'deadLettered') {
      deadLettered.inc()
    }
  })
  registry.onCollect(async () => {
    const m = relay.metrics()
    // The relay's own count: a publishFailed event may be the open circuit's refusal, which
    // reached no broker and is no failed call.
    failures.inc(Math.max(0, m.publishFailures - failures.get()))
    relayLag.set(m.lagMs / 1000)
    partitions.set(m.ownedPartitions)
    for (const state of breakerStates) breaker.set({ state }, m.breakerState === state ? 1 : 0)
    const { value: stats, ok } = outboxFigures.latest()
    if (stats !== undefined) {
      outboxLag.set(stats.lagMs / 1000)
      pending.set(stats.pending)
      dead.set(stats.dead)
      stranded.set(stats.stranded)
    }
    statsUp.set(ok ? 1 : 0)
  })
  return { registry, outboxFigures }
}

/**
 * Logs what the relay reports, at levels an operator can filter on. `broker` is the broker as
 * `relay started` names it (the logger masks its credentials): a failed publish names it, for
 * an operator reading that one line, beside the error (which, once the circuit is open, names
 * the failure that opened it).
 */
function logRelayEvents(relay: Relay, log: Logger, broker: string): void {
  relay.events.on((event) => {
    switch (event.type) {
      case 'published':
        if (log.isLevelEnabled('debug'))
          log.debug('published', { count: event.count, durationMs: event.durationMs })
        break
      case 'publishFailed':
        log.warn('publish failed', { count: event.count, broker, error: event.error })
        break
      case 'retryScheduled':
        log.warn('event will be retried', {
          eventId: event.eventId,
          attempts: event.attempts,
          retryAt: new Date(event.retryAt).toISOString(),
          error: event.error,
        })
        break
      case 'deadLettered':
        log.error('event dead-lettered', {
          eventId: event.eventId,
          aggregateId: event.aggregateId,
          attempts: event.attempts,
          error: event.error,
        })
        break
      case 'partitionsChanged':
        log.info('partitions changed', {
          owned: event.owned.length,
          claimed: event.claimed.length,
          released: event.released.length,
          lost: event.lost.length,
        })
        break
      case 'partitionsRecreated':
        // Rows deleted by hand (breakwater never deletes them): their events waited, unpublished.
        log.warn('missing partition rows recreated', {
          count: event.count,
          table: outboxPartitionsTable,
        })
        break
      case 'error':
        log.error('relay error', { phase: event.phase, error: event.error })
        break
      case 'pruned':
        log.info('published events pruned', { count: event.count })
        break
      case 'crashed':
        log.error('relay halted at a fault point', { point: event.point, error: event.error })
        break
      case 'failed':
        log.error('relay id taken over by another process: stopping', {
          relayId: relay.id,
          error: event.error,
        })
        break
      default:
        break
    }
  })
  relay.breaker.events.on((event) => {
    if (event.type !== 'stateChange') return
    const fields = { from: event.from, to: event.to }
    if (event.to === 'open') log.warn('broker circuit opened', fields)
    else log.info('broker circuit state changed', fields)
  })
}

/**
 * `breakwater relay`: runs an outbox relay against `--db` and `--broker` until SIGTERM or
 * SIGINT, then stops gracefully (the batch in hand is published and marked, nothing half-way).
 * Logs JSON lines to stdout, serves Prometheus metrics when `--metrics-port` is given.
 * Resolves to the exit code: 0 after a graceful stop, 2 for bad arguments, 1 when the database
 * or broker cannot be used, the drain did not finish in time, or the relay stopped itself
 * because another process took its `--relay-id` over (`RELAY_ID_IN_USE`, logged).
 *
 * @example
 * ```ts
 * const code = await relayCommand(['--db', 'postgres://app@db/app', '--broker', 'nats://nats:4222', '--metrics-port', '9464'])
 * ```
 */
export async function relayCommand(args: string[], deps: RelayCommandDeps = {}): Promise<number> {
  const out = deps.stdout ?? process.stdout
  const err = deps.stderr ?? process.stderr
  const env = deps.env ?? process.env
  if (wantsHelp(args)) {
    out.write(usage)
    return 0
  }
  let parsed: RelayArgs
  let secret: string | undefined
  let tls: BrokerTlsOptions | undefined
  let faults: RelayOptions['faults']
  try {
    parsed = parse(args, env)
    if (parsed.broker.kind === 'webhook') secret = webhookSecret(parsed, env)
    if (parsed.brokerTls !== undefined) tls = brokerTlsOption(parsed.brokerTls, env)
    try {
      faults = crashAtFromEnv(env.BREAKWATER_CRASH_AT)
    } catch (error) {
      throw new UsageError(messageOf(error))
    }
  } catch (error) {
    if (!(error instanceof UsageError)) throw error
    err.write(`breakwater relay: ${oneLine(error.message)}\n\n${usage}`)
    return 2
  }

  const log = createJsonLogger({
    output: out,
    level: parsed.logLevel,
    fields: { service: 'breakwater-relay' },
  })
  let crashed: (error: unknown) => void = () => {}
  const done = new Promise<void>((_, reject) => {
    crashed = reject
  })
  done.catch(() => {})

  return runLongRunningCommand({
    name: 'relay',
    log,
    deps,
    drainTimeoutMs: parsed.drainTimeoutMs,
    drainMessage: 'stopping: finishing the batch in hand',
    async start(resources, signal) {
      // A broker adapter checks its settings (the rest of the URL, the TLS files) when it is
      // built and connects only on the first publish: built before the database is opened, a
      // bad setting is reported whatever the state of the database.
      const external = externalPublisher(resources, parsed, tls, secret, log)
      const db = await openMigratedDatabase(
        resources,
        parsed.db,
        'outbox',
        outboxMigrations,
        env,
        'the relay',
        signal,
      )
      const broker = parsed.broker
      let publisher =
        external ??
        (await sqlQueuePublisher(
          resources,
          db,
          broker.kind === 'sql' ? broker.url : undefined,
          parsed,
          env,
          signal,
        ))
      if (parsed.topicPrefix !== undefined) publisher = prefixTopics(publisher, parsed.topicPrefix)

      const relay = createRelay({
        db,
        publisher,
        ...(parsed.batchSize === undefined ? {} : { batchSize: parsed.batchSize }),
        ...(parsed.ordering === undefined ? {} : { ordering: parsed.ordering }),
        ...(parsed.maxAttempts === undefined ? {} : { maxAttempts: parsed.maxAttempts }),
        ...(parsed.maxPayloadBytes === undefined
          ? {}
          : { maxPayloadBytes: parsed.maxPayloadBytes }),
        ...(parsed.maxBackoffMs === undefined
          ? {}
          : {
              retryBackoff: {
                baseDelayMs: Math.min(100, parsed.maxBackoffMs),
                maxDelayMs: parsed.maxBackoffMs,
              },
            }),
        ...(parsed.breakerCooldownMs === undefined
          ? {}
          : { circuitBreaker: { cooldownMs: parsed.breakerCooldownMs } }),
        ...(parsed.leaseMs === undefined ? {} : { leaseMs: parsed.leaseMs }),
        ...(parsed.relayId === undefined ? {} : { relayId: parsed.relayId }),
        ...(faults === undefined ? {} : { faults }),
      })
      logRelayEvents(relay, log, parsed.brokerText)
      relay.events.on((event) => {
        if (event.type === 'crashed') crashed(new Error(`relay halted at ${event.point}`))
        // Its id was taken over (RELAY_ID_IN_USE): the process exits 1, for its supervisor to
        // restart it or alert, rather than run on publishing nothing.
        else if (event.type === 'failed') crashed(event.error)
      })
      const { registry, outboxFigures } = relayMetrics(relay, db, log, broker.kind, {
        intervalMs: parsed.statsIntervalMs,
      })
      // Closed after the metrics server (no scrape starts a read any more), before the database.
      resources.add('outbox figures', () => outboxFigures.idle())
      // Bound before the relay starts: a port in use must fail the start before anything is
      // published (the batches in hand would hold the failed start up to their end). /healthz
      // answers 503 until the relay runs.
      const server = await serveMetrics(resources, {
        port: parsed.metricsPort,
        host: parsed.metricsHost,
        registry,
        health: () => relay.state === 'running',
        log,
      })
      // The first read, so that the first scrape finds figures rather than starting their read.
      if (server !== undefined) outboxFigures.latest()
      try {
        await relay.start()
      } catch (error) {
        throw new StartupError(`the relay could not start: ${messageOf(error)}`)
      }
      resources.add('relay', () => relay.stop())
      log.info('relay started', {
        relayId: relay.id,
        db: parsed.db,
        broker: parsed.brokerText,
        dialect: db.dialect,
        partitions: relay.partitions().length,
        ...(server === undefined ? {} : { metrics: `${server.url}/metrics` }),
      })
      let stats: { published: number; deadLettered: number } | undefined
      return {
        done,
        async stop() {
          // The relay stops first (its batch in hand is published and marked); the metrics
          // server keeps answering until then.
          await resources.closeFirst('relay')
          stats = relay.metrics()
        },
        stopped() {
          log.info('relay stopped', {
            relayId: relay.id,
            published: stats?.published,
            deadLettered: stats?.deadLettered,
            state: relay.state,
          })
        },
      }
    },
  })
}
