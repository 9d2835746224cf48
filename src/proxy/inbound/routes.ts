// The strangler fig's route table: which route a request takes (first match in the order
// written), which target service it goes to (weighted, sticky when configured), live overrides
// from the admin API, and the per-route counters the admin API and metrics read.

import type { Clock } from '../../core/clock.js'
import { InvalidOptionError } from '../../core/errors.js'
import { checkClock } from '../../core/validate.js'
import type { RouteConfig, RouteState, RouteTargetConfig } from '../contracts.js'
import { headerValueOf } from './header-value.js'
import { RetryPins } from './retry-affinity.js'
import { ShadowStats } from './shadow.js'
import { stickyChooser } from './sticky.js'

/** One route of a {@link RouteTable}: its configuration and live counters. */
export interface Route {
  /** The route's name (unique in its table). */
  readonly name: string
  /** The configuration it was built from (the configured targets, not an override). */
  readonly config: RouteConfig
  /** Shadow comparison counters and examples; undefined when the route has no shadow. */
  readonly shadow: ShadowStats | undefined
}

/** Options of {@link createRouteTable}. */
export interface RouteTableOptions {
  /**
   * The table this one replaces (on a config reload): routes with the same name keep their
   * request counters and shadow statistics (shared, so requests still in flight on the old
   * table count too), and migration progress survives a reload.
   * Overrides do not carry over here: the runtime puts back those the reload keeps (see
   * route-overrides.ts).
   * @default undefined
   */
  readonly previous?: RouteTable | undefined
  /**
   * Time for the retry affinity pins' lifetime (tests pass a ManualClock).
   * @default systemClock
   */
  readonly clock?: Clock | undefined
  /**
   * Told about each retry affinity pin once a request may have reached its service (the
   * multi-process mode passes it on to the other workers, which {@link RouteTable.adoptPin} it).
   * @default undefined
   */
  readonly onPinReached?: ((pin: SharedRetryPin) => void) | undefined
}

/** A retry affinity pin as one process tells the others. */
export interface SharedRetryPin {
  readonly route: string
  readonly key: string
  readonly service: string
  /** When it expires (epoch ms). */
  readonly expiresAt: number
}

/** The largest target weight a config or an override may give (the config schema's bound). */
export const maxRouteWeight = 1_000_000
/** Routes in order, with weighted target choice and live overrides. */
export interface RouteTable {
  /** The routes in the order they are tried. */
  readonly routes: readonly Route[]
  /** The route of that name, or undefined. */
  get(name: string): Route | undefined
  /**
   * The first route whose prefix (at a segment boundary), methods and headers all match, or
   * undefined. `path` must be the normalized path (the one that is forwarded); `headers` have
   * lower-case names.
   */
  match(
    method: string,
    path: string,
    headers: Readonly<Record<string, string | string[]>>,
  ): Route | undefined
  /**
   * The methods (upper case, in route order, each once) of the routes whose prefix and
   * headers match `path` and `headers`: what a request there may use when {@link match} found
   * no route for its method (answered 405 with them in `Allow`). Empty when no route takes the
   * path and headers at all (404).
   */
  allowedMethods(path: string, headers: Readonly<Record<string, string | string[]>>): string[]
  /**
   * The target service for one request. With a sticky value, weighted rendezvous hashing of
   * (value, service) picks the target (see sticky.ts): the same user always lands on the same
   * target while the weights stay, and a weight change moves users only to a target whose
   * weight rose or from one whose weight fell. Without one, `random()` (in [0, 1)) picks from
   * the cumulative weights. Reads the route's current targets once: an override swapped in
   * meanwhile applies from the next request on.
   *
   * With a `retryKey` (the request's Idempotency-Key, on a route with retry affinity), a key
   * seen before goes to the service its first request went to, whatever the weights say now,
   * as long as that service is still one of the route's targets (see retry-affinity.ts). The
   * caller then reports the request's end with {@link RouteTable.settle}.
   */
  choose(
    route: Route,
    stickyValue: string | undefined,
    random: () => number,
    retryKey?: string,
  ): string
  /**
   * A request chosen with `retryKey` and sent to `service` is done; `reached`: whether it may
   * have reached the service (the forward's `written`). Keeps the key's pin if any request
   * may have reached it, and drops it otherwise.
   */
  settle(route: Route, retryKey: string, service: string, reached: boolean): void
  /** Takes a pin another process reported; ignored for an unknown route or one without pins. */
  adoptPin(pin: SharedRetryPin): void
  /**
   * Replaces a route's targets until {@link RouteTable.clearOverride}, in this table (a
   * reload builds a new one, given the overrides it keeps: see route-overrides.ts). The caller
   * checks that the services exist. Requests that already chose a target finish there.
   * @throws InvalidOptionError for an unknown route, an empty list, a negative or non-finite
   * weight, a repeated service, or no weight above 0
   */
  override(name: string, targets: readonly RouteTargetConfig[]): void
  /**
   * Puts a route back on its configured targets.
   * @throws InvalidOptionError for an unknown route
   */
  clearOverride(name: string): void
  /** Counts one request answered by `service` on `route`. */
  count(route: Route, service: string): void
  /** Snapshot of every route for the admin API and metrics. */
  state(): RouteState[]
}

// A route's targets: for requests without a sticky value, bands on [0, total) (target i owns
// [upTo(i-1), upTo(i))) that `random()` falls in; for sticky ones, the rendezvous chooser. Built
// once per configuration or override and swapped whole, so a reader never sees half an update.
interface Plan {
  readonly targets: readonly RouteTargetConfig[]
  readonly overridden: boolean
  readonly services: readonly string[]
  readonly upTo: readonly number[]
  readonly total: number
  readonly sticky: (value: string) => string
}

function checkTargets(option: string, targets: unknown): readonly RouteTargetConfig[] {
  if (!Array.isArray(targets) || targets.length === 0) {
    throw new InvalidOptionError(option, 'a non-empty array of { service, weight }', targets)
  }
  const seen = new Set<string>()
  let positive = false
  targets.forEach((target: unknown, i) => {
    const t = target as Partial<RouteTargetConfig> | null
    if (typeof t?.service !== 'string' || t.service === '') {
      throw new InvalidOptionError(`${option}[${i}].service`, 'a service name', t?.service)
    }
    if (seen.has(t.service)) {
      throw new InvalidOptionError(`${option}[${i}].service`, 'a service not listed yet', t.service)
    }
    seen.add(t.service)
    // The config's bound too: weights near Number.MAX_VALUE would sum to Infinity, and then
    // every request would go to one target.
    if (
      typeof t.weight !== 'number' ||
      !Number.isFinite(t.weight) ||
      t.weight < 0 ||
      t.weight > maxRouteWeight
    ) {
      throw new InvalidOptionError(
        `${option}[${i}].weight`,
        `a number from 0 to ${maxRouteWeight}`,
        t.weight,
      )
    }
    if (t.weight > 0) positive = true
  })
  if (!positive) {
    throw new InvalidOptionError(option, 'at least one target with weight > 0', targets)
  }
  return targets.map((t: RouteTargetConfig) => ({ service: t.service, weight: t.weight }))
}

// Bands are laid out in service-name order, not in the order written (random requests have no
// identity to keep, but one layout is easier to reason about). Sticky users do not use the
// bands: with three or more targets, bands in name order move users between two targets when
// a third one's weight changes; rendezvous hashing moves none.
function planOf(targets: readonly RouteTargetConfig[], overridden: boolean): Plan {
  const sorted = [...targets]
    .filter((t) => t.weight > 0)
    .sort((a, b) => (a.service < b.service ? -1 : a.service > b.service ? 1 : 0))
  const upTo: number[] = []
  let total = 0
  for (const t of sorted) {
    total += t.weight
    upTo.push(total)
  }
  // checkTargets made sure some weight is above 0, so there is a chooser.
  const sticky = stickyChooser(sorted) as (value: string) => string
  return { targets, overridden, services: sorted.map((t) => t.service), upTo, total, sticky }
}

function normalizePrefix(option: string, prefix: unknown): string {
  if (typeof prefix !== 'string' || !prefix.startsWith('/')) {
    throw new InvalidOptionError(option, 'a path starting with "/"', prefix)
  }
  return trimPrefix(prefix)
}

/** `prefix` without its trailing slashes (`/api/` → `/api`); `/` stays `/`. */
export function trimPrefix(prefix: string): string {
  let p = prefix
  while (p.length > 1 && p.endsWith('/')) p = p.slice(0, -1)
  return p
}

/** The gateway's answer to a request no route takes: 404, or 405 with `Allow`. */
export interface NoRouteAnswer {
  readonly status: 404 | 405
  readonly code: 'ROUTE_NOT_FOUND' | 'METHOD_NOT_ALLOWED'
  readonly detail: string
  /** The `Allow` header of a 405: the methods the routes of the path take. */
  readonly allow: string | undefined
}

/**
 * The answer to a request `table` has no route for: 405 `METHOD_NOT_ALLOWED` with `Allow` when
 * routes take its path and headers but not its method (RFC 9110 §15.5.6), else 404
 * `ROUTE_NOT_FOUND`. The detail names the method and the normalized path (never the query,
 * which may carry tokens).
 *
 * @example
 * ```ts
 * const table = createRouteTable([route])
 * const answer = noRouteAnswer(table, 'GET', '/only/x', {})
 * // { status: 405, code: 'METHOD_NOT_ALLOWED', allow: 'POST', detail: 'no route takes GET /only/x; use POST' }
 * ```
 */
export function noRouteAnswer(
  table: RouteTable,
  method: string,
  path: string,
  headers: Readonly<Record<string, string | string[]>>,
): NoRouteAnswer {
  const allowed = table.allowedMethods(path, headers)
  if (allowed.length === 0) {
    const detail = `no route matches ${method} ${path}`
    return { status: 404, code: 'ROUTE_NOT_FOUND', detail, allow: undefined }
  }
  const allow = allowed.join(', ')
  const detail = `no route takes ${method} ${path}; use ${allow}`
  return { status: 405, code: 'METHOD_NOT_ALLOWED', detail, allow }
}

/**
 * True when `path` is `prefix` or lies under it at a segment boundary: `/orders` matches
 * `/orders` and `/orders/1`, never `/ordersx`. A prefix of `/` matches every path. With
 * `caseSensitive` false, ASCII letters match in either case (`/ORDERS/1` too).
 */
export function matchesPrefix(path: string, prefix: string, caseSensitive = true): boolean {
  if (prefix === '/') return path.startsWith('/')
  const head = path.slice(0, prefix.length)
  if (caseSensitive ? head !== prefix : asciiLower(head) !== asciiLower(prefix)) return false
  return path.length === prefix.length || path.charCodeAt(prefix.length) === 47 /* / */
}

// Lower-cases A-Z only. Normalized paths are visible ASCII (normalize-path.ts), so this is
// what an app matching without case (a regular expression's `i` flag on the raw path, as
// Express does) compares; percent-encoded letters (`%C3%A9` é, `%C3%89` É) stay distinct
// there too. Unicode case mapping could also change the length, and the strip below slices
// by the prefix's length.
function asciiLower(text: string): string {
  return text.replace(/[A-Z]+/g, (upper) => upper.toLowerCase())
}

/**
 * Removes `prefix` from `path` at a segment boundary (`/api/x` → `/x`, `/api` → `/`), in
 * whatever case the path spells it when `caseSensitive` is false (the route's
 * `match.caseSensitive`); a path not under the prefix is returned unchanged.
 */
export function stripPathPrefix(
  path: string,
  prefix: string | undefined,
  caseSensitive = true,
): string {
  if (prefix === undefined || prefix === '' || prefix === '/') return path
  const p = trimPrefix(prefix)
  if (!matchesPrefix(path, p, caseSensitive)) return path
  const rest = path.slice(p.length)
  return rest === '' ? '/' : rest
}

class RouteEntry implements Route {
  readonly name: string
  readonly config: RouteConfig
  readonly shadow: ShadowStats | undefined
  readonly prefix: string
  readonly caseSensitive: boolean
  readonly methods: ReadonlySet<string> | undefined
  readonly headers: readonly (readonly [string, string])[]
  readonly configured: Plan
  plan: Plan
  readonly requests: Map<string, number>
  readonly pins: RetryPins | undefined

  constructor(config: RouteConfig, index: number, previous: RouteEntry | undefined, clock: Clock) {
    const at = `routes[${index}]`
    if (typeof config?.name !== 'string' || config.name === '') {
      throw new InvalidOptionError(`${at}.name`, 'a non-empty route name', config?.name)
    }
    this.name = config.name
    this.config = config
    this.prefix = normalizePrefix(`${at}.match.prefix`, config.match?.prefix)
    const caseSensitive = config.match.caseSensitive
    if (caseSensitive !== undefined && typeof caseSensitive !== 'boolean') {
      throw new InvalidOptionError(`${at}.match.caseSensitive`, 'true or false', caseSensitive)
    }
    this.caseSensitive = caseSensitive ?? true
    const methods = config.match.methods
    if (methods !== undefined && !Array.isArray(methods)) {
      throw new InvalidOptionError(`${at}.match.methods`, 'an array of method names', methods)
    }
    this.methods = methods === undefined ? undefined : new Set(methods.map((m) => m.toUpperCase()))
    this.headers = Object.entries(config.match.headers ?? {}).map(
      ([name, value]) => [name.toLowerCase(), value] as const,
    )
    this.configured = planOf(checkTargets(`${at}.targets`, config.targets), false)
    this.plan = this.configured
    // Shared with the route of the table this one replaces, not copied: a request that started
    // before a reload still counts when it finishes on the old table.
    this.requests = previous?.requests ?? new Map()
    // Pins and shadow statistics survive a reload (a retry in flight during it still follows
    // its first attempt). Shared, they are not reconfigured here: this table may belong to a
    // reload that is refused after it was built. Each route passes its own settings instead.
    this.pins =
      config.retryAffinity === undefined ? undefined : (previous?.pins ?? new RetryPins(clock))
    const shadow = config.shadow
    this.shadow =
      shadow === undefined ? undefined : (previous?.shadow ?? new ShadowStats(shadow.keepExamples))
  }

  matches(method: string, path: string, headers: Readonly<Record<string, string | string[]>>) {
    if (this.methods !== undefined && !this.methods.has(method.toUpperCase())) return false
    return this.takes(path, headers)
  }

  /** Whether the prefix and headers match, whatever the method. */
  takes(path: string, headers: Readonly<Record<string, string | string[]>>): boolean {
    if (!matchesPrefix(path, this.prefix, this.caseSensitive)) return false
    for (const [name, expected] of this.headers) {
      // A repeated header means the same as its values joined with ", " (RFC 9110 §5.3).
      if (headerValueOf(headers, name) !== expected) return false
    }
    return true
  }

  /** Whether `service` is a target of this route now (configured or overridden, any weight). */
  hasTarget(service: string): boolean {
    return (
      this.plan.targets.some((t) => t.service === service) ||
      this.configured.targets.some((t) => t.service === service)
    )
  }
}

class Table implements RouteTable {
  readonly routes: readonly RouteEntry[]
  readonly #byName = new Map<string, RouteEntry>()

  constructor(configs: readonly RouteConfig[], options: RouteTableOptions) {
    if (!Array.isArray(configs)) {
      throw new InvalidOptionError('routes', 'an array of routes', configs)
    }
    const previous = options.previous instanceof Table ? options.previous.#byName : undefined
    const clock = checkClock('clock', options.clock)
    const onPinReached = options.onPinReached
    this.routes = configs.map((config, i) => {
      const entry = new RouteEntry(config, i, previous?.get(config?.name), clock)
      // Pins are shared with the table this one replaces: the newest table's listener wins.
      if (entry.pins !== undefined)
        entry.pins.onReached =
          onPinReached === undefined
            ? undefined
            : (key, service, expiresAt) =>
                onPinReached({ route: entry.name, key, service, expiresAt })
      if (this.#byName.has(entry.name)) {
        throw new InvalidOptionError(`routes[${i}].name`, 'a route name not used yet', entry.name)
      }
      this.#byName.set(entry.name, entry)
      return entry
    })
  }

  get(name: string): Route | undefined {
    return this.#byName.get(name)
  }

  match(
    method: string,
    path: string,
    headers: Readonly<Record<string, string | string[]>>,
  ): Route | undefined {
    for (const route of this.routes) if (route.matches(method, path, headers)) return route
    return undefined
  }

  allowedMethods(path: string, headers: Readonly<Record<string, string | string[]>>): string[] {
    const allowed = new Set<string>()
    for (const route of this.routes) {
      if (route.methods === undefined || !route.takes(path, headers)) continue
      for (const method of route.methods) allowed.add(method)
    }
    return [...allowed]
  }

  choose(
    route: Route,
    stickyValue: string | undefined,
    random: () => number,
    retryKey?: string,
  ): string {
    const entry = route as RouteEntry
    const pins = entry.pins
    const affinity = entry.config.retryAffinity
    if (retryKey === undefined || pins === undefined || affinity === undefined)
      return this.#weighted(entry, stickyValue, random)
    const pinned = pins.pinned(retryKey)
    if (pinned !== undefined) {
      if (entry.hasTarget(pinned)) {
        pins.follow(retryKey)
        return pinned
      }
      pins.forget(retryKey)
    }
    const chosen = this.#weighted(entry, stickyValue, random)
    pins.pin(retryKey, chosen, affinity)
    return chosen
  }

  settle(route: Route, retryKey: string, service: string, reached: boolean): void {
    ;(route as RouteEntry).pins?.settle(retryKey, service, reached)
  }

  adoptPin(pin: SharedRetryPin): void {
    const route = this.#byName.get(pin.route)
    const maxKeys = route?.config.retryAffinity?.maxKeys
    if (maxKeys !== undefined) route?.pins?.adopt(pin.key, pin.service, pin.expiresAt, maxKeys)
  }

  #weighted(route: RouteEntry, stickyValue: string | undefined, random: () => number): string {
    const plan = route.plan
    if (stickyValue !== undefined) return plan.sticky(stickyValue)
    const x = random() * plan.total
    const { upTo, services } = plan
    for (let i = 0; i < upTo.length; i++) if (x < (upTo[i] as number)) return services[i] as string
    // Only reachable through floating-point rounding at the very top of the range.
    return services[services.length - 1] as string
  }

  override(name: string, targets: readonly RouteTargetConfig[]): void {
    const route = this.#route(name)
    route.plan = planOf(checkTargets('targets', targets), true)
  }

  clearOverride(name: string): void {
    const route = this.#route(name)
    route.plan = route.configured
  }

  count(route: Route, service: string): void {
    const requests = (route as RouteEntry).requests
    requests.set(service, (requests.get(service) ?? 0) + 1)
  }

  state(): RouteState[] {
    return this.routes.map((route) => ({
      name: route.name,
      targets: route.plan.targets.map((t) => ({ ...t })),
      overridden: route.plan.overridden,
      requestsByService: Object.fromEntries(route.requests),
      shadow: route.shadow?.snapshot(route.config.shadow?.keepExamples),
      retryAffinity:
        route.pins === undefined
          ? undefined
          : { pinnedKeys: route.pins.size, repeatsFollowed: route.pins.followed },
    }))
  }

  #route(name: string): RouteEntry {
    const route = this.#byName.get(name)
    if (route === undefined) {
      throw new InvalidOptionError('route', 'the name of a configured route', name)
    }
    return route
  }
}

/**
 * Builds the route table of a gateway listener. Routes are tried in the order given; the
 * first whose prefix, methods and headers match takes the request. Each route splits its
 * traffic over weighted targets; with `sticky` the split hashes a header or cookie so a user
 * stays on one target, and a weight change moves users only to the target whose weight rose or
 * from the one whose weight fell (see {@link RouteTable.choose}).
 *
 * @example
 * ```ts
 * const table = createRouteTable(listener.routes)
 * const route = table.match('GET', '/orders/7', { 'x-user-id': 'u-1' })
 * if (route) {
 *   const service = table.choose(route, 'u-1', Math.random)
 *   table.override(route.name, [{ service: 'legacy', weight: 1 }]) // rollback
 * }
 * ```
 */
export function createRouteTable(
  routes: readonly RouteConfig[],
  options: RouteTableOptions = {},
): RouteTable {
  return new Table(routes, options)
}
