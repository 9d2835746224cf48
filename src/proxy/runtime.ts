// The proxy's runtime: turns a ProxyConfig into running services and listeners, and swaps
// them on reload. A "generation" is one config's services, route tables and handlers. Handlers
// read `ctx.services()` once per request, so a request that started on one generation
// finishes on it; a reload swaps the generation pointer, and the old generation's services
// close after their in-flight work (ServiceRuntime.close waits for it). Listener sockets
// survive a reload unless their host, port or TLS files changed.

import { type IncomingMessage, type ServerResponse, STATUS_CODES } from 'node:http'
import { resolve } from 'node:path'
import { type Clock, maxTimerDelayMs, type TimerHandle } from '../core/clock.js'
import { AbortedError, BreakwaterError, InvalidOptionError } from '../core/errors.js'
import { checkClock, checkInteger, checkObject } from '../core/validate.js'
import { createJsonLogger, type Logger } from '../observability/logger.js'
import {
  type Counter,
  createMetricsRegistry,
  type Gauge,
  type MetricsRegistry,
  metricsPerRegistry,
} from '../observability/metrics.js'
import { redactUrl } from '../stores/redact.js'
import { checkEnvSecrets } from './config/env-secrets.js'
import {
  ConfigInvalidError,
  formatProblem,
  ProxyClosedError,
  ProxyStartError,
  type ProxyStartErrorCode,
} from './config/errors.js'
import { checkAdminTokenFile } from './config/files.js'
import { type ProxyConfigOverrides, parseProxyConfig, readConfigText } from './config/load.js'
import { keepsServiceRuntime } from './config/reload.js'
import type {
  InboundContext,
  ListenerConfig,
  ListenerRefusalHandler,
  ProxyConfig,
  ProxyDeps,
  RequestHandler,
  RouteState,
  RouteTargetConfig,
  ServiceRegistry,
  ServiceRuntime,
  ServiceState,
  ShadowMismatch,
  UpgradeHandler,
} from './contracts.js'
import { AMBASSADOR_ROUTE, createAmbassadorHandler } from './inbound/ambassador.js'
import type { FastRequestHandler } from './inbound/fast-connection.js'
import { createGatewayHandler } from './inbound/gateway.js'
import { createListenerServer, type ListenerServer } from './inbound/listener.js'
import { endWithProblem } from './inbound/raw-response.js'
import { listenerRefusalLogger } from './inbound/request.js'
import {
  logOverridesAfterReload,
  type NamedRouteOverride,
  type OverridesAfterReload,
  overridesAfterReload,
} from './inbound/route-overrides.js'
import { createRouteTable, type RouteTable, type SharedRetryPin } from './inbound/routes.js'
import { createShadowRunner, type ShadowRunner } from './inbound/shadow.js'
import {
  createSidecarIdempotency,
  openProxyIdempotency,
  type ProxyIdempotencyStore,
  proxySweepIntervalMs,
  type SidecarIdempotency,
} from './inbound/sidecar-idempotency.js'
import { exportTunnelGauge } from './inbound/websocket.js'
import { defaultStartTimeoutMs, type StartBound, startBound, unbounded } from './start-bound.js'
import { type FileWatch, watchFileContent } from './upstream/file-watch.js'
import { createServiceRuntime } from './upstream/index.js'
import { resetUpstreamGauges, upstreamMetrics } from './upstream/metrics.js'

/** Options of {@link startProxy}. */
export interface StartProxyOptions {
  /**
   * The configuration: YAML text, a YAML file (`{ file }`, re-read on reload and watched), or
   * an already resolved `ProxyConfig` (taken as given: build it with `parseProxyConfig`, which
   * also checks the cross-field rules).
   */
  readonly config: string | { readonly file: string } | ProxyConfig
  /**
   * Settings given besides the file or text (the CLI's `--workers`), applied each time it is
   * read, at start and at every reload, as if the file held them.
   * @default none
   */
  readonly configOverrides?: ProxyConfigOverrides | undefined
  /**
   * Time source of every policy, deadline and timer.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
  /**
   * Where the proxy logs (access logs too when `accessLog` is on): any object with the
   * {@link Logger} methods (a pino or winston logger behind a small adapter).
   * @default JSON lines on stdout at level info, each with `component`: `proxy` or the part that
   * wrote it (`admin`, `shadow`, `idempotency`), secrets redacted; never a process tag under
   * `service`, which names the upstream service a line is about (docs/proxy.md)
   */
  readonly logger?: Logger | undefined
  /**
   * Registry of the proxy's metrics (`/metrics`); see {@link MetricsRegistry}.
   * @default a new registry
   */
  readonly metrics?: MetricsRegistry | undefined
  /**
   * Reload when the config file changes (only with `config: { file }`).
   * @default true
   */
  readonly watch?: boolean | undefined
  /**
   * Quiet time after the last change to the config file before it is reloaded (ms), so an
   * editor's several writes become one reload.
   * @default 250
   */
  readonly watchDebounceMs?: number | undefined
  /**
   * Start the admin API when the config has an `admin` section. Worker processes of the
   * multi-process mode set this to false: their primary serves the admin API.
   * @default true
   */
  readonly admin?: boolean | undefined
  /**
   * Where the admin token's `{ env }` reference is read. (Services read their outbound
   * credentials from `process.env`.) A variable that is unset or holds no usable token is
   * refused at start and by a reload (`CONFIG_INVALID` naming `admin.token.env`).
   * @default process.env
   */
  readonly env?: Readonly<Record<string, string | undefined>> | undefined
}

/** A running proxy; see {@link startProxy}. */
export interface Proxy {
  /** The bound address of a listener (the actual port when the config said 0). */
  address(listener: string): { host: string; port: number }
  /** The admin API's bound address, or undefined when it is not running. */
  adminAddress(): { host: string; port: number } | undefined
  /**
   * Validates and applies a new config: `yamlText`, or else the config file read again.
   * Throws {@link ConfigInvalidError} (code `CONFIG_INVALID`) and keeps the running config
   * when the new one is invalid or cannot be applied (e.g. a port in use, or its start took
   * longer than its `startTimeoutMs`: a new idempotency store that does not answer), and
   * `ProxyClosedError` (code `PROXY_CLOSED`) once {@link Proxy.close} was called.
   */
  reload(yamlText?: string): Promise<void>
  /** Sends a route to these targets until {@link Proxy.resetRoute} or a reload. */
  switchRoute(route: string, targets: { service: string; weight: number }[]): void
  /** Puts a route back on its configured targets. */
  resetRoute(route: string): void
  /** Every route's state (targets, override, counters, shadow statistics). */
  routes(): RouteState[]
  /** Every service's state (breaker, bulkhead, endpoints). */
  services(): ServiceState[]
  /** Forces a service's breaker open until {@link Proxy.reset}. */
  isolate(service: string): void
  /** Closes a service's breaker and clears its ejections. */
  reset(service: string): void
  /** The Prometheus text of the proxy's metrics. */
  metricsText(): Promise<string>
  /**
   * Graceful stop: readiness turns false, listeners stop accepting and let requests in flight
   * finish for up to `drainMs` (default: the config's `drainTimeoutMs`), then services, the
   * admin API and the file watcher close. A `drainMs` that is not an integer >= 0 is refused
   * (InvalidOptionError, code `INVALID_OPTION`) before anything stops. Resolves with how the
   * drain went: `cut` when requests were still under way at `drainMs` and the proxy cut them.
   */
  close(drainMs?: number): Promise<ProxyDrainReport>
}

/** How a proxy's stop drained ({@link Proxy.close}); also in its `proxy stopped` log line. */
export interface ProxyDrainReport {
  /** `complete`: every request in flight finished; `cut`: some were cut at the drain timeout. */
  readonly drain: 'complete' | 'cut'
  /** Requests still under way when the drain time was up, cut (access log `DRAIN_TIMEOUT`). */
  readonly cut: number
  /** WebSocket tunnels the stop ended (a drain ends them at once: they never finish by themselves). */
  readonly tunnels: number
}

/** What the admin API needs beyond {@link Proxy} (same process). */
export interface ProxyInternals extends Proxy {
  /** The config in force. */
  config(): ProxyConfig
  /** Latest mismatch examples of a route's shadow (undefined: no such route or no shadow). */
  mismatches(route: string): ShadowMismatch[] | undefined
  /** Listeners bound, config loaded, not draining. */
  ready(): boolean
  /** Names of the configured listeners that are not listening (a failed reload's rebind). */
  listenersDown(): string[]
  /** Turns readiness false without closing anything yet (first step of a drain). */
  beginDrain(): void
  /**
   * Reloads and resolves with nothing, or with the error (for callers that report it); rejects
   * with `ProxyClosedError` (code `PROXY_CLOSED`) once the proxy is closed.
   */
  tryReload(yamlText?: string): Promise<ConfigInvalidError | undefined>
  /**
   * Sets (or clears) who is told about each retry affinity pin once a request may have reached
   * its service; a worker of the multi-process mode sends them to its primary.
   */
  onRetryPinReached(listener: ((pin: SharedRetryPin) => void) | undefined): void
  /** Takes a retry affinity pin another worker reported. */
  adoptRetryPin(pin: SharedRetryPin): void
  /**
   * Sets (or clears) who is told when a listener that was not listening is bound again
   * outside a reload (see {@link listenersDown}); a worker of the multi-process mode tells its
   * primary.
   */
  onListenersChanged(listener: (() => void) | undefined): void
  /**
   * Logs the route switches a reload kept or dropped at debug (true) instead of info and warn:
   * a worker of the multi-process mode, whose primary logs that decision once for all workers.
   */
  logSwitchesAtDebug(atDebug: boolean): void
}

interface Generation {
  readonly config: ProxyConfig
  readonly services: ReadonlyMap<string, ServiceRuntime>
  readonly registry: ServiceRegistry
  readonly tables: ReadonlyMap<string, RouteTable>
  readonly handlers: ReadonlyMap<string, RequestHandler>
}

interface RuntimeMetrics {
  readonly reloads: Counter
  readonly reloadFailures: Counter
  readonly configLoaded: Gauge
  readonly routeOverridden: Gauge
  readonly retryPins: Gauge
  readonly retryPinsFollowed: Counter
}

// Backoff of the tries to bind a listener a failed reload could not bind again.
const firstRebindDelayMs = 1_000
const maxRebindDelayMs = 30_000

const runtimeMetrics = metricsPerRegistry(
  (registry): RuntimeMetrics => ({
    reloads: registry.counter({
      name: 'breakwater_proxy_config_reloads_total',
      help: 'Config reloads applied.',
    }),
    reloadFailures: registry.counter({
      name: 'breakwater_proxy_config_reload_failures_total',
      help: 'Config reloads refused (invalid file, or could not be applied); the old config stays.',
    }),
    configLoaded: registry.gauge({
      name: 'breakwater_proxy_config_last_reload_success_timestamp_seconds',
      help: 'When the config in force was loaded (Unix seconds).',
    }),
    routeOverridden: registry.gauge({
      name: 'breakwater_proxy_route_overridden',
      help: '1 while a route is switched by the admin API away from its configured targets.',
      labelNames: ['route'],
    }),
    retryPins: registry.gauge({
      name: 'breakwater_proxy_route_retry_pins',
      help: 'Idempotency keys a route holds pinned to the target of their first request (retry affinity).',
      labelNames: ['route'],
    }),
    retryPinsFollowed: registry.counter({
      name: 'breakwater_proxy_route_retry_pins_followed_total',
      help: 'Requests sent to the target their key is pinned to, whatever the weights said.',
      labelNames: ['route'],
    }),
  }),
)

/**
 * Starts the proxy: validates the config, creates a `ServiceRuntime` per service, binds every
 * listener (ambassador or gateway), opens the idempotency store when a route needs it, starts
 * the admin API (when configured), and watches the config file. Rejects with
 * {@link ConfigInvalidError} for an invalid config (a `{ env }` secret whose variable is
 * unset, empty or unusable as a header value included: no variable appears later in a
 * running process, and a reload to such a config is refused the same way), and with
 * {@link ProxyStartError} (`PROXY_LISTEN_FAILED`, `PROXY_TLS_INVALID`,
 * `PROXY_IDEMPOTENCY_STORE_FAILED`, naming the setting) for one that cannot be brought up,
 * after closing whatever it had started. A start that takes longer than the config's
 * `startTimeoutMs` (a database that does not answer) rejects with `PROXY_START_TIMEOUT` naming
 * the step it was waiting for.
 *
 * @example
 * ```ts
 * const proxy = await startProxy({ config: { file: 'breakwater.yaml' } })
 * console.log(proxy.address('outbound'))
 * process.once('SIGTERM', () => void proxy.close())
 * ```
 */
export async function startProxy(options: StartProxyOptions): Promise<Proxy> {
  return startProxyRuntime(options)
}

/** {@link startProxy} with the extra methods the admin API and the CLI use. */
export async function startProxyRuntime(options: StartProxyOptions): Promise<ProxyInternals> {
  checkObject('options', options)
  const runtime = new ProxyRuntime(options)
  await runtime.start()
  return runtime
}

type Source =
  | { readonly kind: 'file'; readonly file: string }
  | { readonly kind: 'text'; text: string }
  | { readonly kind: 'object'; readonly config: ProxyConfig }

class ProxyRuntime implements ProxyInternals {
  readonly #deps: ProxyDeps
  readonly #metrics: RuntimeMetrics
  readonly #source: Source
  readonly #env: Readonly<Record<string, string | undefined>>
  readonly #watchEnabled: boolean
  readonly #configOverrides: ProxyConfigOverrides
  readonly #watchDebounceMs: number
  readonly #adminEnabled: boolean
  #generation: Generation | undefined
  readonly #listeners = new Map<string, { config: ListenerConfig; server: ListenerServer }>()
  /** Servers a reload replaced or removed, still draining. */
  readonly #retiring = new Set<ListenerServer>()
  #idempotencyStore: OpenIdempotencyStore | undefined
  #sidecar: SidecarIdempotency | undefined
  /** Stores a reload replaced, closing once their requests are done; close() waits for them. */
  readonly #storesClosing = new Set<Promise<void>>()
  /** Stores being opened for a start or reload, how to cancel each, and when it has ended. */
  readonly #storesOpening = new Set<{ cancel: () => void; settled: Promise<void> }>()
  #admin: AdminServerLike | undefined
  // The admin settings the admin API was started with: read at start only, so a reload checks
  // the token file in force, not one a reloaded file names for the next start.
  #adminSettings: ProxyConfig['admin'] | undefined
  #watcher: FileWatch | undefined
  /**
   * The config file's text as last read (undefined: a reload from it failed to apply, or text
   * given to reload() is in force), which a watch event that leaves it as it is does not reload.
   */
  #fileText: string | undefined
  #reloading: Promise<unknown> = Promise.resolve()
  #draining = false
  /** Set when a start failed: its close is no shutdown to log (nothing served, nothing drains). */
  #startFailed = false
  #pinListener: ((pin: SharedRetryPin) => void) | undefined
  #listenersChanged: (() => void) | undefined
  #switchesLoggedAtDebug = false
  /** The next try to bind listeners a failed reload could not bind again. */
  #rebindTimer: TimerHandle | undefined
  #rebindDelayMs = firstRebindDelayMs
  readonly #stopCollect: () => void
  // One runner for every gateway and generation: its cap on shadow calls in flight holds
  // across reloads, and close() can wait for it.
  readonly #shadow: ShadowRunner
  #closed: Promise<ProxyDrainReport> | undefined

  constructor(options: StartProxyOptions) {
    const clock = checkClock('clock', options.clock)
    const logger = options.logger ?? createJsonLogger({ clock, fields: { component: 'proxy' } })
    const metrics = options.metrics ?? createMetricsRegistry()
    this.#deps = { clock, logger, metrics }
    this.#metrics = runtimeMetrics(metrics)
    // Retry affinity counts live in the route tables; copied into the registry at each scrape.
    // The services' gauges are cleared first, and each running service sets its own again:
    // this collector is registered before any service's, and the registry starts collectors
    // in that order, so a service a reload removed leaves no stale breaker state behind.
    const upstream = upstreamMetrics(metrics)
    this.#stopCollect = metrics.onCollect(() => {
      resetUpstreamGauges(upstream)
      this.#collectRetryAffinity()
    })
    this.#shadow = createShadowRunner({
      clock,
      logger: logger.child({ component: 'shadow' }),
      metrics,
    })
    this.#env =
      options.env === undefined
        ? process.env
        : (checkObject('env', options.env) as Record<string, string | undefined>)
    this.#watchEnabled = checkBoolean('watch', options.watch ?? true)
    // Its values are checked with the file's, as the file's own would be.
    this.#configOverrides = checkObject('configOverrides', options.configOverrides ?? {})
    this.#watchDebounceMs = checkInteger(
      'watchDebounceMs',
      options.watchDebounceMs ?? 250,
      0,
      60_000,
    )
    this.#adminEnabled = checkBoolean('admin', options.admin ?? true)
    const config = options.config
    if (typeof config === 'string') this.#source = { kind: 'text', text: config }
    else if (typeof config === 'object' && config !== null && 'file' in config) {
      // An empty path would resolve to the working folder, and a missing one to "./undefined":
      // both failed later, as an unreadable file named after neither.
      if (typeof config.file !== 'string' || config.file === '')
        throw new InvalidOptionError('config.file', 'a non-empty path', config.file)
      this.#source = { kind: 'file', file: resolve(config.file) }
    } else if (typeof config === 'object' && config !== null && config.services instanceof Map)
      this.#source = { kind: 'object', config }
    else
      throw new InvalidOptionError('config', 'YAML text, { file } or a ProxyConfig', options.config)
  }

  async start(): Promise<void> {
    // The file is watched before it is read: a change while the proxy starts (binding its
    // listeners, opening its store, its admin API) is reloaded once it is up instead of being
    // missed until the next one. The read and apply run in the reload queue, so that reload
    // waits for them.
    this.#watch()
    const bound = startBound(
      this.#deps.clock,
      this.#source.kind === 'object' ? this.#source.config.startTimeoutMs : defaultStartTimeoutMs,
      this.#deps.logger,
    )
    let config: ProxyConfig
    let loaded = false
    try {
      config = await this.#queued(async () => {
        const read = await bound.wait(
          'config',
          `reading ${this.#sourceName()}`,
          this.#readConfig(undefined, bound),
        )
        // The file's own bound, counted from the start.
        bound.limit(read.config.startTimeoutMs)
        this.#checkEnvSecrets(read.config, this.#sourceName())
        // An admin token file without a usable token would have the admin API refuse every
        // request while the proxy looked healthy: refused before anything is bound.
        if (this.#adminEnabled)
          await bound.wait(
            'admin.token',
            'reading the admin token file',
            checkAdminTokenFile(read.config, this.#sourceName()),
          )
        loaded = true
        await this.#apply(read.config, bound)
        return read.config
      })
      if (this.#adminEnabled && config.admin !== undefined) {
        const { startAdminServer } = await import('./admin/server.js')
        const admin = config.admin
        this.#adminSettings = admin
        // Named, as a listener's failure is, so a port in use says which port of the file it is.
        this.#admin = await bound
          .wait(
            'admin',
            `binding ${admin.host}:${admin.port}`,
            startAdminServer({
              config: admin,
              backend: localAdminBackend(this),
              deps: this.#deps,
              env: this.#env,
            }),
            (late) => late.close(),
          )
          .catch((error: unknown) => {
            if (bound.timedOut(error)) throw error
            throw startFailure(
              'PROXY_LISTEN_FAILED',
              'admin',
              `admin (${admin.host}:${admin.port})`,
              error,
            )
          })
      }
    } catch (error) {
      if (loaded) {
        this.#startFailed = true
        await this.close(0)
      } else {
        // The file did not load: nothing started, so there is nothing to drain or to log; the
        // watch stops, and a reload it asked for meanwhile finds the proxy closed.
        this.#closed ??= Promise.resolve({ drain: 'complete', cut: 0, tunnels: 0 })
        this.#watcher?.close()
        this.#stopCollect()
      }
      throw error
    } finally {
      bound.end()
    }
    const log = this.#deps.logger
    log.info('proxy started', {
      listeners: [...this.#listeners.values()].map((l) => ({
        name: l.config.name,
        role: l.config.role,
        ...l.server.address(),
      })),
      admin: this.#admin?.address(),
      services: [...config.services.keys()],
    })
  }

  // ----- Proxy -----

  address(listener: string): { host: string; port: number } {
    const address = this.#listeners.get(listener)?.server.address()
    if (address === undefined)
      throw new InvalidOptionError('listener', 'the name of a running listener', listener)
    return { host: address.host, port: address.port }
  }

  adminAddress(): { host: string; port: number } | undefined {
    return this.#admin?.address()
  }

  async reload(yamlText?: string): Promise<void> {
    const error = await this.tryReload(yamlText)
    if (error !== undefined) throw error
  }

  tryReload(yamlText?: string): Promise<ConfigInvalidError | undefined> {
    // Reloads run one at a time, in the order asked.
    return this.#queued(() => this.#reloadNow(yamlText))
  }

  /**
   * Runs `work` after every reload (and rebind) queued before it. A failure never breaks the
   * queue, and a caller may ignore the returned promise without an unhandled rejection.
   */
  #queued<T>(work: () => Promise<T>): Promise<T> {
    const next = this.#reloading.then(work)
    this.#reloading = next.catch(() => {})
    return next
  }

  switchRoute(route: string, targets: { service: string; weight: number }[]): void {
    const generation = this.#current()
    const table = tableOf(generation, route)
    if (!Array.isArray(targets))
      throw new InvalidOptionError('targets', 'a list of { service, weight }', targets)
    targets.forEach((target, i) => {
      if (typeof target !== 'object' || target === null || !generation.services.has(target.service))
        throw new InvalidOptionError(
          `targets[${i}].service`,
          `a configured service (${[...generation.services.keys()].join(', ')})`,
          (target as { service?: unknown } | null)?.service,
        )
    })
    table.override(
      route,
      targets.map((t): RouteTargetConfig => ({ service: t.service, weight: t.weight })),
    )
    this.#metrics.routeOverridden.set({ route }, 1)
    this.#deps.logger.info('route switched', { route, targets })
  }

  onRetryPinReached(listener: ((pin: SharedRetryPin) => void) | undefined): void {
    this.#pinListener = listener
  }

  onListenersChanged(listener: (() => void) | undefined): void {
    this.#listenersChanged = listener
  }

  logSwitchesAtDebug(atDebug: boolean): void {
    this.#switchesLoggedAtDebug = atDebug
  }

  adoptRetryPin(pin: SharedRetryPin): void {
    const generation = this.#generation
    if (generation === undefined) return
    for (const table of generation.tables.values()) table.adoptPin(pin)
  }

  resetRoute(route: string): void {
    tableOf(this.#current(), route).clearOverride(route)
    this.#metrics.routeOverridden.set({ route }, 0)
    this.#deps.logger.info('route reset to its configured targets', { route })
  }

  routes(): RouteState[] {
    const out: RouteState[] = []
    const generation = this.#generation
    if (generation === undefined) return out
    for (const table of generation.tables.values()) out.push(...table.state())
    return out
  }

  services(): ServiceState[] {
    return [...(this.#generation?.services.values() ?? [])].map((s) => s.state())
  }

  isolate(service: string): void {
    this.#service(service).isolate()
    this.#deps.logger.warn('service isolated by the admin API', { service })
  }

  reset(service: string): void {
    this.#service(service).reset()
    this.#deps.logger.info('service reset by the admin API', { service })
  }

  metricsText(): Promise<string> {
    return this.#deps.metrics.render()
  }

  close(drainMs?: number): Promise<ProxyDrainReport> {
    // Checked before anything stops: a bad value used to fail the listeners' close midway,
    // leaving a proxy half stopped that no later close() could finish.
    if (drainMs !== undefined) {
      try {
        checkInteger('close.drainMs', drainMs, 0, maxTimerDelayMs)
      } catch (error) {
        return Promise.reject(error)
      }
    }
    this.#closed ??= this.#close(drainMs)
    return this.#closed
  }

  // ----- ProxyInternals -----

  config(): ProxyConfig {
    return this.#current().config
  }

  mismatches(route: string): ShadowMismatch[] | undefined {
    const state = this.routes().find((r) => r.name === route)
    return state?.shadow === undefined ? undefined : [...state.shadow.examples]
  }

  ready(): boolean {
    if (this.#draining || this.#generation === undefined) return false
    return this.listenersDown().length === 0
  }

  listenersDown(): string[] {
    // The config in force, not the servers held: a listener a failed reload could not bind
    // again has no server left at all.
    const generation = this.#generation
    if (generation === undefined) return []
    return generation.config.listeners
      .filter(({ name }) => this.#listeners.get(name)?.server.address() === undefined)
      .map(({ name }) => name)
  }

  beginDrain(): void {
    if (!this.#draining && !this.#startFailed)
      this.#deps.logger.info('draining: readiness is now false')
    this.#draining = true
  }

  // ----- internals -----

  #current(): Generation {
    if (this.#generation === undefined)
      throw new InvalidOptionError('proxy', 'a started proxy', 'not started')
    return this.#generation
  }

  #service(name: string): ServiceRuntime {
    const generation = this.#current()
    const service = generation.services.get(name)
    if (service === undefined)
      throw new InvalidOptionError(
        'service',
        `a configured service (${[...generation.services.keys()].join(', ')})`,
        name,
      )
    return service
  }

  // The name of the config's source in messages, as #readConfig gives it to the loader.
  #sourceName(): string {
    return this.#source.kind === 'file' ? this.#source.file : 'config'
  }

  // Refuses a config whose `{ env }` secrets are unset or unusable: no variable appears later
  // in a running process. The admin token only where this process serves the admin API.
  #checkEnvSecrets(config: ProxyConfig, source: string): void {
    checkEnvSecrets(config, source, {
      services: process.env,
      admin: this.#adminEnabled ? this.#env : undefined,
    })
  }

  // The config to apply, read from the file unless `yamlText` is given. The file's text is
  // noted as the one read last, unless `bound` gave up on the read meanwhile: that reload
  // failed, and the text it never applied must not count as in force.
  async #readConfig(
    yamlText: string | undefined,
    bound: StartBound,
  ): Promise<{ config: ProxyConfig; fromFile?: true }> {
    const overrides = this.#configOverrides
    if (yamlText !== undefined) return { config: parseProxyConfig(yamlText, 'reload', overrides) }
    const source = this.#source
    switch (source.kind) {
      case 'file': {
        // Not readFile: a path that is no regular file (a FIFO) is refused before it is read.
        const text = await readConfigText(source.file).catch(() => undefined)
        if (!bound.expired()) this.#fileText = text
        if (text === undefined) {
          // Unreadable: loadProxyConfig reports it as it always has.
          const { loadProxyConfig } = await import('./config/load.js')
          return { config: await loadProxyConfig(source.file, overrides), fromFile: true }
        }
        return { config: parseProxyConfig(text, source.file, overrides), fromFile: true }
      }
      case 'text':
        return { config: parseProxyConfig(source.text, 'config', overrides) }
      case 'object':
        return { config: source.config }
    }
  }

  async #reloadNow(yamlText: string | undefined): Promise<ConfigInvalidError | undefined> {
    // Resolving would say the config was applied.
    if (this.#closed !== undefined) throw new ProxyClosedError('reload')
    const previous = this.#generation?.config
    // Bounded as a start is, so a reload that waits on something that never answers (a new
    // idempotency.url whose database accepts and stays silent) is refused instead of holding
    // every reload queued behind it, and close(), for ever. Reading the file is bounded by the
    // config in force, the rest by the new config's own startTimeoutMs, both counted from here.
    const bound = startBound(this.#deps.clock, previous?.startTimeoutMs, this.#deps.logger)
    try {
      let config: ProxyConfig
      let fromFile: true | undefined
      try {
        ;({ config, fromFile } = await bound.wait(
          'config',
          `reading ${this.#sourceName()}`,
          this.#readConfig(yamlText, bound),
        ))
        const source = yamlText === undefined ? this.#sourceName() : 'reload'
        this.#checkEnvSecrets(config, source)
        // The token file is read on each admin request: one that became empty or unreadable
        // refuses every /admin/ request, this reload's own POST included. Refused as at start,
        // naming the file, while the running config stays.
        if (this.#adminSettings !== undefined)
          await bound.wait(
            'admin.token',
            'reading the admin token file',
            checkAdminTokenFile({ admin: this.#adminSettings }, source),
          )
      } catch (error) {
        return this.#reloadFailed(error, yamlText === undefined)
      }
      bound.limit(config.startTimeoutMs)
      try {
        await this.#apply(config, bound)
      } catch (error) {
        // Not in force (a port in use): the next event tries the same text again.
        if (fromFile) this.#fileText = undefined
        return this.#reloadFailed(error, fromFile === true)
      }
      this.#reloaded(config, previous, yamlText, fromFile)
      return undefined
    } finally {
      bound.end()
    }
  }

  // A reload applied: notes where its config came from, and counts and logs it.
  #reloaded(
    config: ProxyConfig,
    previous: ProxyConfig | undefined,
    yamlText: string | undefined,
    fromFile: true | undefined,
  ): void {
    const log = this.#deps.logger
    // Text given to reload() puts the file out of force: its next event applies it again.
    if (!fromFile) this.#fileText = undefined
    if (yamlText !== undefined && this.#source.kind === 'text') this.#source.text = yamlText
    if (previous !== undefined) warnStartOnly(previous, config, log)
    this.#metrics.reloads.inc()
    log.info('config reloaded', { services: [...config.services.keys()] })
  }

  // `fromFile`: the refused config was (to be) read from the config file, which the log line
  // then names (not a text given to reload(), nor a config object).
  #reloadFailed(error: unknown, fromFile: boolean): ConfigInvalidError {
    this.#metrics.reloadFailures.inc()
    const invalid =
      error instanceof ConfigInvalidError
        ? error
        : new ConfigInvalidError('reload', [
            {
              path: '(apply)',
              message: `expected a config that can be applied, got ${
                BreakwaterError.is(error) || error instanceof Error ? error.message : String(error)
              }`,
              line: undefined,
              column: undefined,
            },
          ])
    const source = this.#source
    this.#deps.logger.error('config reload refused; the running config stays in force', {
      // Which file to fix, when several proxies run on a host (the problems' own names are
      // paths inside it).
      ...(fromFile && source.kind === 'file' ? { file: source.file } : {}),
      code: invalid.code,
      // As --check prints them, with the line and column: the operator reading the log
      // finds the place without running --check.
      problems: invalid.problems.map(formatProblem),
      problemCount: invalid.problemCount,
    })
    return invalid
  }

  // Builds the generation for `config` and swaps it in. On any failure, everything built for
  // it is closed and the running generation is untouched.
  async #apply(config: ProxyConfig, bound: StartBound = unbounded): Promise<void> {
    const old = this.#generation
    const deps = this.#deps
    const services = new Map<string, ServiceRuntime>()
    const created: ServiceRuntime[] = []
    const newListeners: { config: ListenerConfig; server: ListenerServer }[] = []
    const handedOver: { config: ListenerConfig; server: ListenerServer }[] = []
    let idempotencyOpened: OpenIdempotencyStore | undefined
    // The listeners this config adds listen before it is in force (its other listeners are
    // bound after them): what reaches them meanwhile waits for this to be settled.
    const adding = pendingConfig()
    try {
      for (const [name, serviceConfig] of config.services) {
        // An unchanged service keeps its runtime: pools, breaker state and ejections survive.
        const previous = old?.services.get(name)
        if (
          previous !== undefined &&
          old !== undefined &&
          keepsServiceRuntime(old.config, config, name)
        ) {
          services.set(name, previous)
          continue
        }
        let service: ServiceRuntime
        try {
          service = createServiceRuntime(serviceConfig, deps, {
            deadlineHeader: config.deadlineHeader,
            ...(config.via === undefined ? {} : { via: config.via }),
          })
        } catch (error) {
          throw tlsFailure(error)
        }
        created.push(service)
        services.set(name, service)
      }
      const registry: ServiceRegistry = {
        get: (name) => services.get(name),
        names: () => [...services.keys()],
      }

      const needsIdempotency = config.listeners.some((l) =>
        l.routes.some((r) => r.idempotency !== undefined),
      )
      const url = config.idempotency?.url ?? 'memory'
      const sweepMs = proxySweepIntervalMs(
        config.listeners.flatMap((l) => l.routes.flatMap((r) => r.idempotency?.ttlMs ?? [])),
      )
      let sidecar = this.#sidecar
      if (needsIdempotency && this.#idempotencyStore?.url !== url) {
        let store: ProxyIdempotencyStore
        try {
          store = await bound.wait(
            'idempotency.url',
            `opening ${redactUrl(url)} and running its migrations`,
            this.#openStore(url, sweepMs, bound),
          )
        } catch (error) {
          if (bound.timedOut(error)) throw error
          throw startFailure(
            'PROXY_IDEMPOTENCY_STORE_FAILED',
            'idempotency.url',
            `idempotency.url: cannot open ${redactUrl(url)}`,
            error,
          )
        }
        const tracked = trackRuns(
          createSidecarIdempotency({
            idempotency: store.idempotency,
            clock: deps.clock,
            logger: deps.logger.child({ component: 'idempotency' }),
          }),
        )
        idempotencyOpened = { url, store, idle: tracked.idle }
        sidecar = tracked.sidecar
      }

      const ctx: InboundContext = {
        clock: deps.clock,
        logger: deps.logger,
        metrics: deps.metrics,
        // Read per request: the generation in force when a request asks (once its body is
        // read) serves it, as its route table does.
        services: () => this.#generation?.registry ?? registry,
        deadlineHeader: config.deadlineHeader,
        via: config.via,
        accessLog: config.accessLog,
      }
      const tables = new Map<string, RouteTable>()
      const handlers = new Map<string, RequestHandler>()
      for (const listener of config.listeners) {
        if (listener.role === 'ambassador') {
          handlers.set(listener.name, createAmbassadorHandler(listener, ctx))
        } else {
          const previousTable = old?.tables.get(listener.name)
          const table = createRouteTable(listener.routes, {
            clock: deps.clock,
            onPinReached: (pin) => this.#pinListener?.(pin),
            ...(previousTable === undefined ? {} : { previous: previousTable }),
          })
          tables.set(listener.name, table)
          // Read per request, as `ctx.services()` is: a request whose body was still arriving
          // at a reload is routed once read, and the old table could name a service the reload
          // removed (a 502 for a request the new config serves). A listener the reload removed
          // keeps its last table.
          const name = listener.name
          handlers.set(
            name,
            createGatewayHandler(listener, ctx, () => this.#generation?.tables.get(name) ?? table, {
              shadow: this.#shadow,
              ...(needsIdempotency && sidecar !== undefined ? { idempotency: sidecar } : {}),
            }),
          )
        }
      }

      // Listeners whose socket settings changed (or that are new) get a new server; bind them
      // all before swapping, so a port in use fails the reload rather than half-applying it.
      const plan = config.listeners.filter((listener) => {
        const running = this.#listeners.get(listener.name)
        return running === undefined || !sameSocket(running.config, listener)
      })
      // A running listener that is rebuilt or removed and holds a port a new server needs
      // must let go of it first (Node 20 has no SO_REUSEPORT): it stops accepting (its
      // requests in flight go on) and is re-created if the reload fails after all.
      const wanted = new Set(plan.filter((l) => l.port !== 0).map((l) => l.port))
      for (const [name, running] of this.#listeners) {
        const next = config.listeners.find((l) => l.name === name)
        const leaving = next === undefined || plan.includes(next)
        if (leaving && wanted.has(running.config.port)) {
          handedOver.push(running)
          this.#retire(running.server, config.drainTimeoutMs)
        }
      }
      if (handedOver.length > 0) await new Promise<void>((done) => setImmediate(done))
      for (const listener of plan) {
        let server: ListenerServer
        try {
          const dispatcher = this.#dispatcher(listener.name, {
            config: adding,
            tunnels: handlers.get(listener.name)?.upgrade !== undefined,
          })
          server = createListenerServer(listener, dispatcher, deps)
        } catch (error) {
          throw tlsFailure(error)
        }
        newListeners.push({ config: listener, server })
        try {
          // A host name is resolved first, which may take as long as the resolver does. Given
          // up on, the server is closed below, and a bind that completes after is undone.
          await bound.wait(
            `listeners.${listener.name}`,
            `binding ${listener.host}:${listener.port}`,
            server.listen(),
          )
        } catch (error) {
          if (bound.timedOut(error)) throw error
          throw startFailure(
            'PROXY_LISTEN_FAILED',
            `listeners.${listener.name}`,
            `listeners.${listener.name}: cannot listen on ${listener.host}:${listener.port}`,
            error,
          )
        }
      }

      // Swap. The route switches in force now (one made while this reload was binding too)
      // go onto the new tables, when the reload keeps them, first.
      const generation: Generation = { config, services, registry, tables, handlers }
      const switches = old === undefined ? undefined : carrySwitches(old, generation)
      this.#generation = generation
      if (idempotencyOpened !== undefined) {
        const previousStore = this.#idempotencyStore
        this.#idempotencyStore = idempotencyOpened
        this.#sidecar = sidecar
        idempotencyOpened = undefined
        // Requests the previous generation runs on it record their results there first: closed
        // under them, a result would be lost and its key left in progress.
        if (previousStore !== undefined) {
          const closing = previousStore
            .idle()
            .then(() => closeLater(previousStore.store, deps.logger))
          this.#storesClosing.add(closing)
          void closing.finally(() => this.#storesClosing.delete(closing))
        }
      }
      // A kept store sweeps by the ttlMs of the routes now in force (its one sweeper replaced
      // when they changed it). With no guarded route left it keeps its interval: the records
      // it holds still expire.
      if (needsIdempotency) this.#idempotencyStore?.store.sweepEvery(sweepMs)
      const replaced: ListenerServer[] = []
      for (const entry of newListeners) {
        const running = this.#listeners.get(entry.config.name)
        if (running !== undefined) replaced.push(running.server)
        this.#listeners.set(entry.config.name, entry)
      }
      for (const [name, running] of this.#listeners) {
        const listener = config.listeners.find((l) => l.name === name)
        if (listener === undefined) {
          replaced.push(running.server)
          this.#listeners.delete(name)
        } else if (!newListeners.some((n) => n.config.name === name)) {
          // Same socket; limits and routes may have changed, and handlers read them.
          this.#listeners.set(name, { config: listener, server: running.server })
        }
      }
      for (const server of replaced)
        if (!handedOver.some((h) => h.server === server))
          this.#retire(server, config.drainTimeoutMs)
      if (old !== undefined) {
        for (const [name, service] of old.services)
          if (services.get(name) !== service) void closeService(service, deps.logger)
      }
      this.#metrics.configLoaded.set(Math.floor(deps.clock.now() / 1000))
      // A route the file no longer has has no series left (a stale 1 would say it is still
      // switched); the others say whether the reload kept their switch.
      this.#metrics.routeOverridden.reset()
      for (const listener of config.listeners)
        for (const route of listener.routes)
          this.#metrics.routeOverridden.set({ route: route.name }, 0)
      exportTunnelGauges(config, deps.metrics)
      if (switches !== undefined) this.#reportSwitches(switches)
      adding.settle(true)
    } catch (error) {
      // Before the new listeners close: what waits on them is answered first.
      adding.settle(false)
      for (const entry of newListeners) await entry.server.close(0).catch(() => {})
      // Give the ports back to the listeners that let go of them for this reload.
      for (const entry of handedOver) {
        try {
          // Inside the try: re-reading its TLS files can fail too, and must not cut this
          // clean-up short nor hide the reload's own error.
          const server = createListenerServer(
            entry.config,
            this.#dispatcher(entry.config.name),
            deps,
          )
          await server.listen()
          this.#listeners.set(entry.config.name, { config: entry.config, server })
        } catch (rebind) {
          this.#listeners.delete(entry.config.name)
          // Not listening until a reload binds it: /readyz answers 503 naming it.
          deps.logger.error('could not rebind a listener after a failed reload', {
            listener: entry.config.name,
            error: (rebind as Error).message,
            retryInMs: this.#rebindDelayMs,
          })
          this.#scheduleRebind()
        }
      }
      for (const service of created) await service.close().catch(() => {})
      if (idempotencyOpened !== undefined) await idempotencyOpened.store.close().catch(() => {})
      throw error
    }
  }

  // Counts and logs, one line per route, the switches a reload kept and those it dropped.
  #reportSwitches(decided: OverridesAfterReload): void {
    for (const { route } of decided.kept) this.#metrics.routeOverridden.set({ route }, 1)
    logOverridesAfterReload(this.#deps.logger, decided, this.#switchesLoggedAtDebug)
  }

  // Opens the idempotency store at `url` for a start or reload. The open is cancelled when
  // `bound` gives up on it or the proxy closes, rather than left running unwatched: a migration
  // waiting on a lock another session holds would otherwise keep its connection, and with it
  // the process, for as long as that lock is held. A store it opens all the same (its
  // migration ended as it was cancelled) is closed. close() waits for it, within its drain.
  #openStore(url: string, sweepMs: number, bound: StartBound): Promise<ProxyIdempotencyStore> {
    const logger = this.#deps.logger
    const controller = new AbortController()
    const cancel = (): void => controller.abort()
    // Closing since this start or reload began: nothing new is opened.
    if (this.#closed !== undefined) cancel()
    bound.signal.addEventListener('abort', cancel, { once: true })
    const opening = openProxyIdempotency(url, {
      clock: this.#deps.clock,
      sweepIntervalMs: sweepMs,
      logger: logger.child({ component: 'idempotency' }),
      signal: controller.signal,
    }).then(async (store) => {
      if (!controller.signal.aborted) return store
      await closeLater(store, logger)
      throw new AbortedError(controller.signal.reason)
    })
    const entry = {
      cancel,
      settled: opening.then(
        () => {},
        () => {},
      ),
    }
    this.#storesOpening.add(entry)
    void entry.settled.finally(() => {
      this.#storesOpening.delete(entry)
      bound.signal.removeEventListener('abort', cancel)
    })
    return opening
  }

  // The listener server keeps one handler for its life; it looks up the current
  // generation's handler on each request. `adding`: the listener is one a start or reload
  // adds, whether that config is in force yet, and whether it tunnels upgrades there.
  #dispatcher(
    listener: string,
    adding?: { readonly config: PendingConfig; readonly tunnels: boolean },
  ): RequestHandler {
    // The fast path asks the current generation too: `fast` is undefined while its handler has
    // none (a gateway), so new connections go straight to node:http, and a request that meets
    // a handler without one after a reload is handed over (false).
    const fast: FastRequestHandler = (req, res) =>
      this.#generation?.handlers.get(listener)?.fast?.(req, res) ?? false
    const currentFast = (): FastRequestHandler | undefined =>
      this.#generation?.handlers.get(listener)?.fast === undefined ? undefined : fast
    // A listener with no handler in force (one a reload removed, still draining, or one a start
    // or reload adds, before its config is in force) has none to count and log what it
    // answers: its LISTENER_REMOVED and LISTENER_NOT_IN_FORCE answers and its own refusals (an
    // upgrade refused PROXY_DRAINING, what node's parser refuses) are counted and logged as any
    // listener's refusals before routing (no route, no service), under the access log setting
    // in force.
    const deps = this.#deps
    const generation = (): Generation | undefined => this.#generation
    const unhandled = listenerRefusalLogger(
      {
        clock: deps.clock,
        metrics: deps.metrics,
        logger: deps.logger,
        get accessLog() {
          return generation()?.config.accessLog ?? false
        },
      },
      listener,
    )
    const refused = (req: IncomingMessage, code: string, detail: string): void =>
      unhandled({ status: 503, code, detail, remote: req.socket.remoteAddress })
    // Held until the config that adds the listener is settled: in force, the request is served
    // by it, as one that came a moment later would be; not applied, it is refused. (Served by
    // the handler meanwhile, it would run on the services and routes in force, which are not
    // the ones this config gives it.) The start or reload is bounded by its startTimeoutMs, and
    // so is the wait.
    const held = (req: IncomingMessage, then: () => void): boolean => {
      const config = adding?.config
      if (config === undefined || config.applied !== undefined) return false
      deps.logger.debug('request waiting for the config that adds its listener', {
        listener,
        remote: req.socket.remoteAddress,
      })
      config.whenSettled(then)
      return true
    }
    const dispatch = (req: IncomingMessage, res: ServerResponse) => {
      const handler = this.#generation?.handlers.get(listener)
      if (handler !== undefined) {
        handler(req, res)
        return
      }
      if (held(req, () => dispatch(req, res))) return
      if (adding?.config.applied === false) {
        // The start or reload that was adding it failed: the listener closes, and the client
        // finds the listeners in force when it tries again.
        sendListenerProblem(res, 503, 'LISTENER_NOT_IN_FORCE', listenerNotInForceDetail)
        refused(req, 'LISTENER_NOT_IN_FORCE', listenerNotInForceDetail)
        return
      }
      // A listener a reload removed, still draining: the client reconnects, and finds the
      // listeners in force.
      sendListenerProblem(res, 503, 'LISTENER_REMOVED', listenerRemovedDetail)
      refused(req, 'LISTENER_REMOVED', listenerRemovedDetail)
    }
    // A handshake held as a request is, when the config that adds the listener tunnels there.
    const heldUpgrade: UpgradeHandler = (req, socket, head) => {
      const go = (): void => {
        // The listener closed it meanwhile (a drain ends upgraded connections at once).
        if (socket.destroyed) return
        const upgrade = this.#generation?.handlers.get(listener)?.upgrade
        if (upgrade !== undefined) {
          upgrade(req, socket, head)
          return
        }
        endWithProblem(socket, deps.clock, 503, 'LISTENER_NOT_IN_FORCE', listenerNotInForceDetail)
        refused(req, 'LISTENER_NOT_IN_FORCE', listenerNotInForceDetail)
      }
      if (!held(req, go)) go()
    }
    // Upgrades go to the current generation's handler too; while it has none (an ambassador
    // without, or a listener a reload removed) the listener refuses them itself. A listener
    // being added holds them when its config's handler takes them, and else refuses them as
    // it will once that config is in force.
    Object.defineProperty(dispatch, 'upgrade', {
      get: (): UpgradeHandler | undefined => {
        const handler = this.#generation?.handlers.get(listener)
        if (handler !== undefined) return handler.upgrade
        if (adding?.tunnels === true && adding.config.applied === undefined) return heldUpgrade
        return undefined
      },
      enumerable: true,
    })
    // So are the listener's own refusals, logged by the handler in force (its accessLog), or
    // by `unhandled` while there is none.
    Object.defineProperty(dispatch, 'refused', {
      get: (): ListenerRefusalHandler | undefined => {
        const handler = this.#generation?.handlers.get(listener)
        return handler === undefined ? unhandled : handler.refused
      },
      enumerable: true,
    })
    return Object.defineProperty(dispatch, 'fast', { get: currentFast, enumerable: true })
  }

  // Closes a server a reload replaced or removed, letting its requests in flight finish for up
  // to `drainMs`; kept until it has closed, so that close() bounds that drain by its own.
  #retire(server: ListenerServer, drainMs: number): void {
    this.#retiring.add(server)
    void server.close(drainMs).finally(() => this.#retiring.delete(server))
  }

  #watch(): void {
    if (!this.#watchEnabled || this.#source.kind !== 'file') return
    const file = this.#source.file
    const log = this.#deps.logger
    // Watches the folder, not the file: editors and `mv` replace the file, which ends a watch
    // on the file itself; a ConfigMap volume's update names only its `..`-prefixed entries. A
    // folder watch that fails (an error, the folder removed and created again, a folder that
    // does not exist yet) is armed again after a delay and the file read then, instead of the
    // proxy never seeing a change again. Unchanged content is compared by #reloadFromWatch as
    // well: after a reload that failed to apply, the same text is tried again.
    const react = (): void => void this.#reloadFromWatch(file)
    this.#watcher = watchFileContent(
      file,
      undefined,
      react,
      (error) =>
        log.warn('config file watch failed', {
          error: error instanceof Error ? error.message : String(error),
        }),
      {
        clock: this.#deps.clock,
        debounceMs: this.#watchDebounceMs,
        onUnchanged: react,
        onRewatched: () => log.info('config file watched again', { file }),
      },
    )
  }

  // A listener a failed reload let go of and could not bind again (its port taken meanwhile,
  // its certificate files gone) is tried again on its own, backing off from 1 s to 30 s, so
  // the proxy heals once the cause is gone instead of waiting for the next good reload. The
  // tries run in the reload queue: never in the middle of a reload.
  #scheduleRebind(): void {
    if (this.#closed !== undefined || this.#rebindTimer !== undefined) return
    const delayMs = this.#rebindDelayMs
    this.#rebindDelayMs = Math.min(delayMs * 2, maxRebindDelayMs)
    this.#rebindTimer = this.#deps.clock.setTimeout(() => {
      this.#rebindTimer = undefined
      void this.#queued(() => this.#rebindMissing())
    }, delayMs)
  }

  async #rebindMissing(): Promise<void> {
    const generation = this.#generation
    if (this.#closed !== undefined || this.#draining || generation === undefined) return
    const log = this.#deps.logger
    let bound = false
    let stillDown = false
    for (const listener of generation.config.listeners) {
      // A reload since may have bound it already.
      if (this.#listeners.has(listener.name)) continue
      let server: ListenerServer | undefined
      try {
        server = createListenerServer(listener, this.#dispatcher(listener.name), this.#deps)
        await server.listen()
        this.#listeners.set(listener.name, { config: listener, server })
        bound = true
        log.info('listener bound again', { listener: listener.name })
      } catch (error) {
        await server?.close(0).catch(() => {})
        stillDown = true
        log.error('could not bind a listener again', {
          listener: listener.name,
          error: (error as Error).message,
          retryInMs: this.#rebindDelayMs,
        })
      }
    }
    if (stillDown) this.#scheduleRebind()
    else this.#rebindDelayMs = firstRebindDelayMs
    if (bound) this.#listenersChanged?.()
  }

  // In the reload queue: the text is compared with what the reload before it read.
  #reloadFromWatch(file: string): Promise<unknown> {
    return this.#queued(async () => {
      if (this.#closed !== undefined) return undefined
      // A delete or a half-written file would fail the reload anyway; only react to content.
      const text = await readConfigText(file).catch(() => undefined)
      // Closed during the read: nothing to reload, and no one to tell.
      if (text === undefined || this.#closed !== undefined) return undefined
      // The event may be another file's: a ConfigMap update swaps ..data for any of its keys.
      // Reloading the same config is not free (every route table and handler is rebuilt).
      if (text === this.#fileText) {
        this.#deps.logger.debug('config file unchanged; not reloaded', { file })
        return undefined
      }
      this.#deps.logger.info('config file changed; reloading', { file })
      return this.#reloadNow(undefined)
    })
  }

  async #close(drainMs: number | undefined): Promise<ProxyDrainReport> {
    this.beginDrain()
    this.#watcher?.close()
    this.#deps.clock.clearTimeout(this.#rebindTimer)
    this.#rebindTimer = undefined
    // A reload waiting on its new store (a migration lock held elsewhere) ends now rather than
    // at its startTimeoutMs; so does an open a start or reload gave up on.
    for (const { cancel } of this.#storesOpening) cancel()
    await this.#reloading.catch(() => {})
    const wait = drainMs ?? this.#generation?.config.drainTimeoutMs ?? 30_000
    const clock = this.#deps.clock
    const cutAt = clock.now() + wait
    // Servers a reload retired may still drain requests: the stop's own drain bounds them too.
    // Only what this stop cut is counted (a retired server may have cut requests at its own
    // drain's end, before it).
    const servers = [...[...this.#listeners.values()].map((l) => l.server), ...this.#retiring]
    const before = servers.map((server) => server.cutRequests)
    const tunnelsBefore = servers.map((server) => server.closedTunnels)
    await Promise.all(servers.map((server) => server.close(wait)))
    let cut = 0
    let tunnels = 0
    servers.forEach((server, i) => {
      cut += server.cutRequests - (before[i] ?? 0)
      tunnels += server.closedTunnels - (tunnelsBefore[i] ?? 0)
    })
    this.#listeners.clear()
    // Shadow comparisons run after their client's answer: they get what is left of the drain
    // time, and are cut then (a slow shadow service must not hold the stop for its overallMs).
    if (this.#shadow.inFlight > 0) await settleBy(clock, cutAt, this.#shadow.idle())
    this.#shadow.cancel()
    await this.#shadow.idle()
    const generation = this.#generation
    if (generation !== undefined)
      await Promise.all(
        [...generation.services.values()].map((s) => closeService(s, this.#deps.logger)),
      )
    await this.#idempotencyStore?.store.close().catch(() => {})
    // Their requests ended with the services.
    await Promise.all(this.#storesClosing)
    // Stores being opened were cancelled above: they let go of their connections within moments
    // (a connect to a server that does not answer, within pg's connect timeout). Waited for
    // within the drain, so that the process can end once close() resolves.
    await settleBy(clock, cutAt, Promise.all([...this.#storesOpening].map((o) => o.settled)))
    await this.#admin?.close()
    this.#stopCollect()
    // At warn when requests were cut: drainTimeoutMs is shorter than the requests it should let
    // finish, which an operator wants to see rather than a stop that reads as clean.
    if (cut > 0) {
      const report: ProxyDrainReport = { drain: 'cut', cut, tunnels }
      this.#deps.logger.warn('proxy stopped', { ...report, drainTimeoutMs: wait })
      return report
    }
    const report: ProxyDrainReport = { drain: 'complete', cut: 0, tunnels }
    // A failed start has no stop to report (the warning above still tells of requests cut on a
    // listener that served while another failed to bind).
    if (this.#startFailed) return report
    this.#deps.logger.info('proxy stopped', {
      drain: 'complete',
      ...(tunnels > 0 ? { tunnels } : {}),
    })
    return report
  }

  #collectRetryAffinity(): void {
    const { retryPins, retryPinsFollowed } = this.#metrics
    // Rebuilt at each scrape: a route a reload removed, or whose retry affinity it turned off,
    // holds no pins and has no series.
    retryPins.reset()
    for (const route of this.routes()) {
      const affinity = route.retryAffinity
      if (affinity === undefined) continue
      const labels = { route: route.name }
      retryPins.set(labels, affinity.pinnedKeys)
      // The table's count only grows (its pins survive reloads); a route removed and added
      // again starts from 0, and the counter waits until the new count passes it.
      const delta = affinity.repeatsFollowed - retryPinsFollowed.get(labels)
      if (delta > 0) retryPinsFollowed.inc(labels, delta)
    }
  }
}

/** An idempotency store in use, and when the requests running on it are done. */
interface OpenIdempotencyStore {
  readonly url: string
  readonly store: ProxyIdempotencyStore
  /** Resolves once no request runs on the store (at once when none does). */
  readonly idle: () => Promise<void>
}

// Counts the requests running through `inner`, so a store a reload replaced is closed only
// once the requests of the generation before are done with it.
function trackRuns(inner: SidecarIdempotency): {
  sidecar: SidecarIdempotency
  idle: () => Promise<void>
} {
  let running = 0
  const waiters: (() => void)[] = []
  return {
    sidecar: {
      guards: (config, method) => inner.guards(config, method),
      run: async (config, at, inbound, res, forward) => {
        running++
        try {
          return await inner.run(config, at, inbound, res, forward)
        } finally {
          running--
          if (running === 0) for (const done of waiters.splice(0)) done()
        }
      },
    },
    idle: () =>
      running === 0 ? Promise.resolve() : new Promise<void>((done) => void waiters.push(done)),
  }
}

/** The admin server as the runtime sees it. */
interface AdminServerLike {
  address(): { host: string; port: number }
  close(): Promise<void>
}

// One text for each answer's detail and its `request refused` line: the client is told what
// the operator reads.
const listenerRemovedDetail = 'this listener was removed by a config reload'
const listenerNotInForceDetail = 'the config that adds this listener was not applied'

/**
 * Whether the config a start or reload applies is in force yet, for the requests that reach a
 * listener it adds before then (see ProxyRuntime's dispatcher).
 */
interface PendingConfig {
  /** Undefined while the start or reload runs; then whether the config was applied. */
  readonly applied: boolean | undefined
  /** Runs `then` once {@link PendingConfig.settle} is called (at once if it was). */
  whenSettled(then: () => void): void
  /** Says how it went, once (later calls do nothing), and runs what waited. */
  settle(applied: boolean): void
}

function pendingConfig(): PendingConfig {
  let applied: boolean | undefined
  const waiting: (() => void)[] = []
  return {
    get applied() {
      return applied
    },
    whenSettled(then) {
      if (applied === undefined) waiting.push(then)
      else then()
    },
    settle(outcome) {
      if (applied !== undefined) return
      applied = outcome
      // At once, not on a later turn: a config not applied has its listeners closed right
      // after, connections and all, and what waited there must be answered first.
      for (const then of waiting.splice(0)) then()
    },
  }
}

// A problem the runtime answers for a listener that has no handler in force, with its detail as
// every other refusal of the proxy has one, and `Connection: close`. The status and code are
// passed as written so the error-code registry test sees them.
function sendListenerProblem(
  res: ServerResponse,
  status: 503,
  code: 'LISTENER_REMOVED' | 'LISTENER_NOT_IN_FORCE',
  detail: string,
): void {
  const body = JSON.stringify({
    type: 'about:blank',
    title: STATUS_CODES[status],
    status,
    code,
    detail,
  })
  // Framed as sendProblem frames the proxy's other problems: a length, and never cached.
  res.writeHead(status, {
    'content-type': 'application/problem+json',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
    connection: 'close',
  })
  res.end(body)
}

function checkBoolean(option: string, value: unknown): boolean {
  if (typeof value !== 'boolean') throw new InvalidOptionError(option, 'true or false', value)
  return value
}

// Settings read once at start: a reload that changes them is applied otherwise, and says so.
function warnStartOnly(before: ProxyConfig, after: ProxyConfig, log: Logger): void {
  if (!sameJson(before.admin, after.admin))
    log.warn('admin settings changed in the file; they apply at the next restart')
  if (before.workers !== after.workers)
    log.warn('workers changed in the file; the worker count applies at the next restart')
}

// Puts the route switches in force in `old` that a reload to `next` keeps onto its tables (not
// in force yet), by the rule the multi-process primary follows for the switches it replays.
function carrySwitches(old: Generation, next: Generation): OverridesAfterReload {
  const live: NamedRouteOverride[] = []
  for (const table of old.tables.values())
    for (const route of table.state())
      if (route.overridden) live.push({ route: route.name, targets: route.targets })
  const decided = overridesAfterReload(old.config, next.config, live)
  for (const { route, targets } of decided.kept) tableOf(next, route).override(route, targets)
  return decided
}

function tableOf(generation: Generation, route: string): RouteTable {
  for (const table of generation.tables.values()) if (table.get(route) !== undefined) return table
  const names = [...generation.tables.values()].flatMap((t) => t.routes.map((r) => r.name))
  throw new InvalidOptionError('route', `a configured route (${names.join(', ')})`, route)
}

function sameSocket(a: ListenerConfig, b: ListenerConfig): boolean {
  return (
    a.host === b.host && a.port === b.port && sameJson(a.tls, b.tls) && sameJson(a.limits, b.limits)
  )
}

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b)
}

async function closeService(service: ServiceRuntime, logger: Logger): Promise<void> {
  try {
    await service.close()
  } catch (error) {
    logger.warn('closing a service failed', { service: service.name, error: String(error) })
  }
}

// Waits for `work` until `cutAt` on `clock` at the latest.
async function settleBy(clock: Clock, cutAt: number, work: Promise<unknown>): Promise<void> {
  const left = cutAt - clock.now()
  if (left <= 0) return
  let timer: TimerHandle | undefined
  await Promise.race([
    work,
    new Promise<void>((done) => {
      timer = clock.setTimeout(done, left)
    }),
  ])
  clock.clearTimeout(timer)
}

async function closeLater(store: ProxyIdempotencyStore, logger: Logger): Promise<void> {
  try {
    await store.close()
  } catch (error) {
    logger.warn('closing the idempotency store failed', { error: String(error) })
  }
}

// The admin API of a single process: calls straight into the runtime.
function localAdminBackend(runtime: ProxyInternals): import('./admin/backend.js').AdminBackend {
  return {
    config: async () => runtime.config(),
    services: async () => [{ pid: process.pid, services: runtime.services() }],
    routes: async () => [{ pid: process.pid, routes: runtime.routes() }],
    switchRoute: async (route, targets) => runtime.switchRoute(route, targets),
    resetRoute: async (route) => runtime.resetRoute(route),
    reload: () => runtime.tryReload(),
    isolate: async (service) => runtime.isolate(service),
    reset: async (service) => runtime.reset(service),
    metricsText: () => runtime.metricsText(),
    ready: () => runtime.ready(),
    listenersDown: () => runtime.listenersDown(),
  }
}

// A part of the config that could not start (`what` names the setting, with its address or
// URL), as one line with the underlying error's message; the error itself stays as the cause.
function startFailure(
  code: ProxyStartErrorCode,
  setting: string,
  what: string,
  error: unknown,
): ProxyStartError {
  const message = error instanceof Error ? error.message : String(error)
  return new ProxyStartError(code, setting, `${what}: ${message}`, error)
}

// The tunnels gauge of every listener and route that can tunnel, at 0 until its first
// handshake: a gateway route with `websocket`, an ambassador exposing a service with it.
function exportTunnelGauges(config: ProxyConfig, metrics: MetricsRegistry): void {
  for (const listener of config.listeners) {
    if (listener.role === 'ambassador') {
      const exposed = listener.services ?? [...config.services.keys()]
      if (exposed.some((name) => config.services.get(name)?.websocket !== undefined))
        exportTunnelGauge(metrics, listener.name, AMBASSADOR_ROUTE)
    } else {
      for (const route of listener.routes)
        if (route.websocket !== undefined) exportTunnelGauge(metrics, listener.name, route.name)
    }
  }
}

// A listener's or service's TLS files that cannot be used are refused where they are read (an
// INVALID_OPTION naming `listeners.<name>.tls` or `services.<name>.tls.<file>`): at start that
// is a fact of the machine, not of the options given, so it becomes PROXY_TLS_INVALID with the
// same message. Anything else passes unchanged.
function tlsFailure(error: unknown): unknown {
  if (
    !(error instanceof InvalidOptionError) ||
    !/^(listeners|services)\..+\.tls(\.(caFile|certFile|keyFile))?$/.test(error.option)
  )
    return error
  return new ProxyStartError('PROXY_TLS_INVALID', error.option, error.message, error)
}
