import type { Clock, TimerHandle } from '../../core/clock.js'
import type { EndpointState, OutlierEjectionConfig } from '../contracts.js'
import type { Http1Handler } from './http1-pool.js'

/** Where discovery says a service lives: an origin and the TLS name to verify, if not its host. */
export interface EndpointTarget {
  /** `http(s)://host:port`, no path. */
  readonly url: string
  /** SNI and verification name (from DNS: the name that was resolved). */
  readonly servername: string | undefined
  /**
   * Lower is preferred (an SRV record's priority): only the endpoints of the lowest priority
   * that has one not ejected are picked.
   * @default 0
   */
  readonly priority?: number
  /**
   * The endpoint's share among those of its priority (an SRV record's weight): picks go to it
   * in proportion to its weight. An endpoint of weight 0 takes none while one of its priority
   * with weight above 0 is picked from; when all of them are 0 they share equally.
   * @default 1
   */
  readonly weight?: number
}

/**
 * An endpoint's connection pool: undici's `Pool` (https) or the proxy's own `Http1Pool` (plain
 * http), both driven through `dispatch` with the same handler.
 */
export interface UpstreamPool {
  dispatch(options: UpstreamDispatch, handler: Http1Handler): unknown
  /** Lets queued and running requests finish, then closes the connections. */
  close(): Promise<void>
  /** Fails queued and running requests and closes the connections now. */
  destroy(): Promise<void>
}

/** One request as a pool takes it. */
export interface UpstreamDispatch {
  readonly path: string
  readonly method: string
  readonly headers: string[]
  readonly body: Buffer | null
}

/** One endpoint of a service: its pool, its load and its health. Mutable, owned by the set. */
export class Endpoint {
  /** The origin, `http(s)://host:port`. */
  readonly url: string
  /** True for `https` endpoints (TLS origination). */
  readonly https: boolean
  /**
   * The rewritten `Host` header: `host[:port]` as written in the URL, or, for an endpoint DNS
   * discovery found, the name it resolved (the TLS name) with the URL's port (none when the
   * scheme's default). The address is no name a virtual host answers to.
   */
  readonly hostHeader: string
  /** SNI and verification name from discovery, when not the URL's host. */
  readonly servername: string | undefined
  /** Lower is preferred; see {@link EndpointTarget.priority}. Updated by a new answer. */
  priority: number
  /** Its share within its priority; see {@link EndpointTarget.weight}. Updated by a new answer. */
  weight: number
  /** Smooth weighted round robin's running credit (owned by the set, reset by a rebuild). */
  credit = 0
  /** The endpoint's connection pool; replaced (and the old one retired) when TLS files change. */
  pool: UpstreamPool | undefined
  /** Attempts on this endpoint that have not ended. */
  inFlight = 0
  /** Failed attempts in a row (reset by a success or the end of an ejection). */
  consecutiveFailures = 0
  /** End of the current ejection on the clock, undefined when not ejected. */
  ejectedUntil: number | undefined
  /** Ejections so far (the nth lasts n times the base time). */
  ejections = 0
  /** Position in the set's healthy list, -1 while ejected or removed. */
  healthyIndex = -1
  /** The timer that ends the current ejection. */
  timer: TimerHandle | undefined

  constructor(target: EndpointTarget) {
    this.url = target.url
    this.https = target.url.startsWith('https:')
    this.servername = target.servername
    this.priority = target.priority ?? 0
    this.weight = target.weight ?? 1
    if (target.servername === undefined)
      this.hostHeader = target.url.slice(target.url.indexOf('//') + 2)
    else {
      const port = new URL(target.url).port
      this.hostHeader = port === '' ? target.servername : `${target.servername}:${port}`
    }
  }

  /** A snapshot for the admin API. */
  state(): EndpointState {
    return {
      url: this.url,
      ejectedUntil: this.ejectedUntil,
      ejections: this.ejections,
      inFlight: this.inFlight,
      consecutiveFailures: this.consecutiveFailures,
    }
  }
}

/** Options of {@link EndpointSet}. */
export interface EndpointSetOptions {
  /** How picks are made. */
  readonly loadBalancer: 'round-robin' | 'least-request'
  /** Ejection settings; undefined: endpoints are never ejected. */
  readonly outlierEjection: OutlierEjectionConfig | undefined
  /** Times ejections. */
  readonly clock: Clock
  /** Random numbers in [0, 1) for the least-request choice of two. */
  readonly random: () => number
  /** Gives a new endpoint its pool. */
  readonly open: (endpoint: Endpoint) => void
  /** Closes a removed endpoint's pool once its requests are done. */
  readonly retire: (endpoint: Endpoint) => void
  /** Told about each ejection (metrics, logs). */
  readonly onEject: (endpoint: Endpoint, durationMs: number) => void
}

/**
 * A service's endpoints with load balancing and outlier ejection.
 *
 * Picking is O(1): ejected endpoints leave the `healthy` list (swap-remove by index) instead of
 * being skipped at every pick. Round robin walks the healthy list; least-request is the
 * power of two choices (two distinct random healthy endpoints, the one with fewer requests in
 * flight wins), which spreads load nearly as well as a full scan at the cost of two reads.
 * Ejection follows Envoy's consecutive-failure detector: an endpoint with `consecutiveFailures`
 * failures in a row is ejected for `baseEjectionMs` times the number of its ejections so far
 * (at most `maxEjectionMs`), unless that would put more than `maxEjectedPercent` of the endpoints out.
 */
export class EndpointSet {
  readonly #options: EndpointSetOptions
  readonly #byUrl = new Map<string, Endpoint>()
  #all: Endpoint[] = []
  #healthy: Endpoint[] = []
  #ejected = 0
  #next = 0
  /**
   * Whether the endpoints have more than one priority (picks then go to the lowest in use) or
   * more than one weight: ejections and returns then rebuild the healthy list.
   */
  #tiered = false
  /**
   * The healthy endpoints' weights when they are not all equal (else undefined: every pick
   * is the unweighted one), in the order of `#healthy`. An endpoint of weight 0 has 0 here
   * while another has more, so it is never picked; when all are 0 the list is undefined.
   */
  #weights: number[] | undefined
  /** The sum of `#weights`. */
  #totalWeight = 0

  constructor(options: EndpointSetOptions) {
    this.#options = options
  }

  /** Every endpoint, ejected or not. */
  get all(): readonly Endpoint[] {
    return this.#all
  }

  /** The endpoints that are not ejected. */
  get healthy(): readonly Endpoint[] {
    return this.#healthy
  }

  /** Endpoints ejected now. */
  get ejectedCount(): number {
    return this.#ejected
  }

  /**
   * Replaces the endpoint list (discovery's new answer). Endpoints that stay keep their pool,
   * load and health; removed ones are retired after their requests finish.
   */
  replace(targets: readonly EndpointTarget[]): void {
    const next: Endpoint[] = []
    const seen = new Set<string>()
    for (const target of targets) {
      if (seen.has(target.url)) continue
      seen.add(target.url)
      let endpoint = this.#byUrl.get(target.url)
      if (endpoint === undefined) {
        endpoint = new Endpoint(target)
        this.#byUrl.set(target.url, endpoint)
        this.#options.open(endpoint)
      } else {
        endpoint.priority = target.priority ?? 0
        endpoint.weight = target.weight ?? 1
      }
      next.push(endpoint)
    }
    for (const old of this.#all) {
      if (seen.has(old.url)) continue
      this.#byUrl.delete(old.url)
      this.#clearTimer(old)
      // Attempts still running on it report to an endpoint that is in no list any more.
      old.healthyIndex = -1
      this.#options.retire(old)
    }
    this.#all = next
    this.#tiered = next.some(
      (endpoint) => endpoint.priority !== next[0]?.priority || endpoint.weight !== next[0]?.weight,
    )
    this.#rebuild()
  }

  /**
   * Picks an endpoint for an attempt, avoiding `avoid` (the endpoint a retry just failed on)
   * when another healthy one exists. With priorities, the healthy list holds only the lowest
   * priority that has an endpoint not ejected (higher ones are backups, as SRV's priority
   * says), picked by weight when their weights differ. When every endpoint is ejected (only possible with
   * `maxEjectedPercent: 100`) it picks among all of them rather than fail: some chance beats
   * none. Undefined only when there are no endpoints at all.
   */
  pick(avoid?: Endpoint): Endpoint | undefined {
    let list = this.#healthy
    if (list.length === 0) {
      list = this.#all
      if (list.length === 0) return undefined
    }
    const n = list.length
    if (n === 1) return list[0]
    const weights = list === this.#healthy ? this.#weights : undefined
    if (weights !== undefined) return this.#pickWeighted(list, weights, avoid)
    if (this.#options.loadBalancer === 'round-robin') {
      let index = this.#next++ % n
      if (this.#next >= 0x3fffffff) this.#next = 0
      if (list[index] === avoid) index = (index + 1) % n
      return list[index]
    }
    const random = this.#options.random
    const i = Math.floor(random() * n) % n
    let j = Math.floor(random() * (n - 1)) % (n - 1)
    if (j >= i) j++
    const a = list[i] as Endpoint
    const b = list[j] as Endpoint
    if (a === avoid) return b
    if (b === avoid) return a
    return b.inFlight < a.inFlight ? b : a
  }

  // With unequal weights (RFC 2782's SRV weight): round robin is nginx's smooth weighted round
  // robin (each pick credits every endpoint its weight and takes the one with the most credit,
  // which then pays the total), so a weight-5 endpoint among two of weight 1 gets 5 picks of 7
  // spread out (a a b a c a a), not 5 in a row. Least-request draws its two candidates at
  // random in proportion to weight and keeps the one with less load for its weight (in flight
  // divided by weight; the first drawn on a tie), so idle endpoints share by weight and busy
  // ones keep requests in flight in proportion to it. O(n) in the endpoints of one priority.
  #pickWeighted(list: readonly Endpoint[], weights: readonly number[], avoid?: Endpoint): Endpoint {
    const n = list.length
    // The endpoint a retry failed on is left out when another one of weight > 0 remains.
    let skip = avoid === undefined ? -1 : list.indexOf(avoid)
    if (skip >= 0 && (weights[skip] as number) >= this.#totalWeight) skip = -1
    const total = this.#totalWeight - (skip >= 0 ? (weights[skip] as number) : 0)
    if (this.#options.loadBalancer === 'round-robin') {
      let best = -1
      for (let i = 0; i < n; i++) {
        const endpoint = list[i] as Endpoint
        endpoint.credit += weights[i] as number
        if (
          i !== skip &&
          (weights[i] as number) > 0 &&
          (best < 0 || endpoint.credit > (list[best] as Endpoint).credit)
        )
          best = i
      }
      const chosen = list[best] as Endpoint
      chosen.credit -= this.#totalWeight
      return chosen
    }
    const random = this.#options.random
    /** An index drawn in proportion to weight among all but `left` (whose weights sum to `sum`). */
    const draw = (sum: number, left: number): number => {
      let r = random() * sum
      let last = -1
      for (let i = 0; i < n; i++) {
        const w = weights[i] as number
        if (i === skip || i === left || w === 0) continue
        last = i
        if (r < w) return i
        r -= w
      }
      // Rounding may leave r just above the last weight.
      return last
    }
    const i = draw(total, -1)
    const a = list[i] as Endpoint
    if (total - (weights[i] as number) <= 0) return a
    const j = draw(total - (weights[i] as number), i)
    const b = list[j] as Endpoint
    return b.inFlight * (weights[i] as number) < a.inFlight * (weights[j] as number) ? b : a
  }

  /** An attempt on `endpoint` got a response that is not a failure. */
  success(endpoint: Endpoint): void {
    endpoint.consecutiveFailures = 0
  }

  /** An attempt on `endpoint` failed (connect error, reset, timeout, 5xx). */
  failure(endpoint: Endpoint): void {
    const failures = ++endpoint.consecutiveFailures
    const config = this.#options.outlierEjection
    if (
      config === undefined ||
      endpoint.ejectedUntil !== undefined ||
      // Removed by discovery: an attempt that was running on it reports late.
      this.#byUrl.get(endpoint.url) !== endpoint ||
      failures < config.consecutiveFailures ||
      (this.#ejected + 1) * 100 > config.maxEjectedPercent * this.#all.length
    )
      return
    const clock = this.#options.clock
    // Capped as Envoy's max_ejection_time: an endpoint that keeps failing is tried again at
    // least every maxEjectionMs, not after ever longer ejections.
    const durationMs = Math.min(
      config.baseEjectionMs * ++endpoint.ejections,
      config.maxEjectionMs ?? Math.max(300_000, config.baseEjectionMs),
    )
    endpoint.ejectedUntil = clock.now() + durationMs
    this.#ejected++
    this.#removeHealthy(endpoint)
    endpoint.timer = clock.setTimeout(() => {
      endpoint.timer = undefined
      this.#return(endpoint)
    }, durationMs)
    this.#options.onEject(endpoint, durationMs)
  }

  /**
   * Ends every ejection and forgets failure counts and past ejections (the admin `reset`): an
   * operator resets once the cause is fixed, so the next ejection lasts `baseEjectionMs`
   * again rather than n + 1 times it.
   */
  reset(): void {
    for (const endpoint of this.#all) {
      this.#clearTimer(endpoint)
      endpoint.ejectedUntil = undefined
      endpoint.consecutiveFailures = 0
      endpoint.ejections = 0
    }
    this.#rebuild()
  }

  /** Clears the ejection timers (the service is closing). */
  dispose(): void {
    for (const endpoint of this.#all) this.#clearTimer(endpoint)
  }

  #return(endpoint: Endpoint): void {
    if (endpoint.ejectedUntil === undefined) return
    endpoint.ejectedUntil = undefined
    endpoint.consecutiveFailures = 0
    if (this.#byUrl.get(endpoint.url) !== endpoint) return
    this.#ejected--
    if (this.#tiered) {
      this.#rebuild()
      return
    }
    endpoint.healthyIndex = this.#healthy.length
    this.#healthy.push(endpoint)
  }

  #removeHealthy(endpoint: Endpoint): void {
    if (this.#tiered) {
      // The last of its priority may be going, and the next priority coming in: ejections are
      // rare, a rebuild is cheap enough.
      this.#rebuild()
      return
    }
    const list = this.#healthy
    const index = endpoint.healthyIndex
    const last = list.pop() as Endpoint
    if (last !== endpoint) {
      list[index] = last
      last.healthyIndex = index
    }
    endpoint.healthyIndex = -1
  }

  #rebuild(): void {
    const healthy: Endpoint[] = []
    let ejected = 0
    let best = Number.POSITIVE_INFINITY
    for (const endpoint of this.#all)
      if (endpoint.ejectedUntil === undefined && endpoint.priority < best) best = endpoint.priority
    for (const endpoint of this.#all) {
      if (endpoint.ejectedUntil === undefined && endpoint.priority === best) {
        endpoint.healthyIndex = healthy.length
        healthy.push(endpoint)
      } else {
        endpoint.healthyIndex = -1
        if (endpoint.ejectedUntil !== undefined) ejected++
      }
    }
    this.#healthy = healthy
    this.#ejected = ejected
    this.#weights = undefined
    this.#totalWeight = 0
    if (healthy.some((endpoint) => endpoint.weight !== healthy[0]?.weight)) {
      // Not all equal, so some weight is above 0: those of weight 0 get none.
      this.#weights = healthy.map((endpoint) => endpoint.weight)
      for (const endpoint of healthy) {
        endpoint.credit = 0
        this.#totalWeight += endpoint.weight
      }
    }
  }

  #clearTimer(endpoint: Endpoint): void {
    if (endpoint.timer !== undefined) {
      this.#options.clock.clearTimeout(endpoint.timer)
      endpoint.timer = undefined
    }
  }
}
