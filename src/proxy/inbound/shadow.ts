// Shadow mode (Twitter's Diffy, in the proxy): a sampled request also goes to the shadow
// service after the client has its answer from the primary; the two responses are compared
// with configured ignores and learned noise removed, and mismatches are counted per route with
// the latest examples kept. Nothing here can delay, change or fail the client's response.

import type { Clock } from '../../core/clock.js'
import { checkClock, checkInteger } from '../../core/validate.js'
import type { Logger } from '../../observability/logger.js'
import {
  type Counter,
  type MetricsRegistry,
  metricsPerRegistry,
} from '../../observability/metrics.js'
import { redactSecrets } from '../../observability/redact.js'
import type {
  CapturedResponse,
  ForwardRequest,
  ServiceRuntime,
  ShadowConfig,
  ShadowMismatch,
} from '../contracts.js'
import {
  type CompareResponsesOptions,
  compareResponses,
  compilePathPatterns,
  type Difference,
  formatDifference,
  withoutNoise,
} from './json-diff.js'

// Noise learned per route is remembered (a timestamp with one-second resolution can be equal in
// two quick primary calls and still differ from the shadow's); the set is bounded so a response
// with ever-new paths cannot grow it without end.
const maxLearnedNoise = 1_000

// Both services are often targets of the route too: the calls stay out of their breakers,
// bulkheads, retries and outlier ejection, which the real clients depend on.
const shadowCall = { shadow: true } as const

/** Shadow counters of one route, as the admin API shows them. */
export interface ShadowSnapshot {
  /** Requests whose primary and shadow responses were compared. */
  readonly compared: number
  /** Comparisons that found a difference after ignores and noise. */
  readonly mismatches: number
  /** The latest mismatches, oldest first. */
  readonly examples: readonly ShadowMismatch[]
  /** Sampled requests not compared: too many shadow calls in flight, or a body over the cap. */
  readonly skipped: number
  /** Shadow (or second primary) calls that failed. */
  readonly errors: number
  /** Paths learned as noise (they differed between two primary responses). */
  readonly noise: readonly string[]
}

/**
 * The shadow counters, examples and learned noise of one route. A reload's route shares them
 * with the route it replaces; how many examples are kept is each route's own setting, passed to
 * {@link ShadowStats.record} and {@link ShadowStats.snapshot}, so a reload that is refused after
 * its routes were built changes nothing of the running route's.
 */
export class ShadowStats {
  compared = 0
  mismatches = 0
  skipped = 0
  errors = 0
  readonly #keep: number
  readonly #examples: ShadowMismatch[] = []
  readonly #noise = new Set<string>()

  /** @param keepExamples How many of the latest mismatches to keep when not told otherwise. */
  constructor(keepExamples: number) {
    this.#keep = checkInteger('shadow.keepExamples', keepExamples, 0)
  }

  /** Paths learned as noise so far. */
  get noise(): ReadonlySet<string> {
    return this.#noise
  }

  /** Adds paths seen to differ between two primary responses. */
  learn(differences: readonly Difference[]): void {
    for (const d of differences) {
      if (this.#noise.size >= maxLearnedNoise) return
      this.#noise.add(d.path)
    }
  }

  /**
   * Records one comparison and, when it found differences, keeps it as an example, keeping the
   * latest `keepExamples`.
   */
  record(example: ShadowMismatch | undefined, keepExamples = this.#keep): void {
    this.compared++
    if (example === undefined) return
    this.mismatches++
    this.#examples.push(example)
    if (this.#examples.length > keepExamples)
      this.#examples.splice(0, this.#examples.length - keepExamples)
  }

  /** A copy of the counters for the admin API, with the latest `keepExamples` examples. */
  snapshot(keepExamples = this.#keep): ShadowSnapshot {
    return {
      compared: this.compared,
      mismatches: this.mismatches,
      examples: keepExamples === 0 ? [] : this.#examples.slice(-keepExamples),
      skipped: this.skipped,
      errors: this.errors,
      noise: [...this.#noise],
    }
  }
}

/** Options of {@link createShadowRunner}. */
export interface ShadowRunnerOptions {
  /**
   * Shadow comparisons running at once (each is one shadow call, plus a second primary call
   * when noise is learned). A sampled request arriving while all are busy is skipped and
   * counted, never queued: shadow traffic must not pile up behind a slow new system.
   * @default 32
   */
  readonly maxInFlight?: number | undefined
  /**
   * Largest response body compared (bytes); a longer primary, shadow or second primary body
   * skips the comparison.
   * @default 1048576 (1 MiB)
   */
  readonly maxBodyBytes?: number | undefined
  /**
   * Clock for the `at` time of mismatch examples.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
  /**
   * Where shadow call failures are logged (debug level, without request data).
   * @default no logging
   */
  readonly logger?: Logger | undefined
  /**
   * Registry for `breakwater_proxy_shadow_comparisons_total{route, result}` (result: `match`,
   * `mismatch`, `skipped`, `error`).
   * @default no metrics
   */
  readonly metrics?: MetricsRegistry | undefined
}

/** What became of one sampled request. */
type ShadowResult = 'match' | 'mismatch' | 'skipped' | 'error'

const comparisonsCounter = metricsPerRegistry(
  (registry): Counter =>
    registry.counter({
      name: 'breakwater_proxy_shadow_comparisons_total',
      help: 'Sampled shadow requests by route and result (match, mismatch, skipped, error).',
      labelNames: ['route', 'result'],
    }),
)

/** One sampled request to compare. */
export interface ShadowJob {
  /** The route's shadow settings. */
  readonly config: ShadowConfig
  /** The route's counters. */
  readonly stats: ShadowStats
  /** The service that answered the client. */
  readonly primary: ServiceRuntime
  /** The shadow service. */
  readonly shadow: ServiceRuntime
  /** The request as forwarded to the primary (its signal and deadline are not reused). */
  readonly request: ForwardRequest
  /** The primary's response as the client got it. */
  readonly response: CapturedResponse
}

/** Runs shadow comparisons in the background with a cap on how many run at once. */
export interface ShadowRunner {
  /** The largest body compared (what to pass as `captureBytes` for the primary). */
  readonly maxBodyBytes: number
  /** Comparisons running now. */
  readonly inFlight: number
  /**
   * Starts a comparison in the background and returns at once: false (and counted as skipped)
   * when the cap is reached or the primary's body was cut. Never throws for the job's failures.
   */
  submit(job: ShadowJob): boolean
  /** Resolves when no comparison is running (for tests and graceful shutdown). */
  idle(): Promise<void>
  /**
   * Cuts the shadow (and second primary) calls of every comparison running now; they end as
   * errors. For a shutdown whose drain time is up.
   */
  cancel(): void
}

const safeMethods = new Set(['GET', 'HEAD', 'OPTIONS'])

interface CompiledShadow {
  readonly options: CompareResponsesOptions
}

const compiledCache = new WeakMap<ShadowConfig, CompiledShadow>()

function compiled(config: ShadowConfig): CompiledShadow {
  let entry = compiledCache.get(config)
  if (entry === undefined) {
    entry = {
      options: {
        ignoreFields: compilePathPatterns(config.ignoreFields),
        ignoreHeaders: new Set(config.ignoreHeaders.map((h) => h.toLowerCase())),
      },
    }
    compiledCache.set(config, entry)
  }
  return entry
}

/** The target as shown in mismatch examples: credentials in the query string masked. */
function safeTarget(target: string): string {
  return redactSecrets(target)
}

class Runner implements ShadowRunner {
  readonly maxBodyBytes: number
  readonly #max: number
  readonly #clock: Clock
  readonly #logger: Logger | undefined
  readonly #comparisons: Counter | undefined
  #inFlight = 0
  #idle: (() => void)[] = []
  /** One per running comparison: aborts its calls. */
  readonly #running = new Set<AbortController>()

  constructor(options: ShadowRunnerOptions) {
    this.#max = checkInteger('shadow.maxInFlight', options.maxInFlight ?? 32, 1)
    this.maxBodyBytes = checkInteger('shadow.maxBodyBytes', options.maxBodyBytes ?? 1_048_576, 0)
    this.#clock = checkClock('clock', options.clock)
    this.#logger = options.logger
    this.#comparisons =
      options.metrics === undefined ? undefined : comparisonsCounter(options.metrics)
  }

  #count(job: ShadowJob, result: ShadowResult): void {
    if (result === 'skipped') job.stats.skipped++
    else if (result === 'error') job.stats.errors++
    this.#comparisons?.inc({ route: job.request.route, result })
  }

  /** Counts a job as an error and logs why (debug level, without request data). */
  #failed(job: ShadowJob, message: string, error: unknown): void {
    this.#count(job, 'error')
    this.#logger?.debug(message, {
      route: job.request.route,
      service: job.shadow.name,
      error: error instanceof Error ? error.message : String(error),
    })
  }

  get inFlight(): number {
    return this.#inFlight
  }

  submit(job: ShadowJob): boolean {
    if (this.#inFlight >= this.#max || job.response.truncated) {
      this.#count(job, 'skipped')
      return false
    }
    this.#inFlight++
    void this.#run(job).finally(() => {
      this.#inFlight--
      if (this.#inFlight === 0) {
        const waiters = this.#idle
        this.#idle = []
        for (const resolve of waiters) resolve()
      }
    })
    return true
  }

  idle(): Promise<void> {
    if (this.#inFlight === 0) return Promise.resolve()
    return new Promise((resolve) => this.#idle.push(resolve))
  }

  cancel(): void {
    for (const controller of this.#running) controller.abort()
  }

  async #run(job: ShadowJob): Promise<void> {
    const controller = new AbortController()
    this.#running.add(controller)
    try {
      await this.#compare(job, controller.signal)
    } finally {
      this.#running.delete(controller)
    }
  }

  async #compare(job: ShadowJob, signal: AbortSignal): Promise<void> {
    const { config, stats, request } = job
    // The client's signal fires when its connection closes, and its deadline was for its own
    // answer: the shadow calls get neither, and are bounded by the services' own timeouts (or
    // cut by cancel() when the proxy stops).
    const detached: ForwardRequest = {
      ...request,
      signal,
      deadlineAt: undefined,
    }
    const learn = config.learnNoise && safeMethods.has(request.method.toUpperCase())
    let shadowResponse: CapturedResponse
    let second: CapturedResponse | undefined
    try {
      ;[shadowResponse, second] = await Promise.all([
        job.shadow.exchange(detached, this.maxBodyBytes, shadowCall),
        learn ? job.primary.exchange(detached, this.maxBodyBytes, shadowCall) : undefined,
      ])
    } catch (error) {
      this.#failed(job, 'shadow call failed', error)
      return
    }
    if (shadowResponse.truncated || second?.truncated === true) {
      this.#count(job, 'skipped')
      return
    }
    const { options } = compiled(config)
    let example: ShadowMismatch | undefined
    try {
      if (second !== undefined) stats.learn(compareResponses(job.response, second, options))
      const differences = withoutNoise(
        compareResponses(job.response, shadowResponse, options),
        stats.noise,
      )
      example =
        differences.length === 0
          ? undefined
          : {
              at: this.#clock.now(),
              method: request.method,
              target: safeTarget(request.target),
              differences: differences.map(formatDifference),
            }
    } catch (error) {
      // The diff walks JSON recursively and the previews stringify it, and the services choose
      // their bodies: one nested deeper than the stack (20,000 levels is 40 KB) throws
      // RangeError here. Counted as an error like a failed call; escaping, it would be an
      // unhandled rejection that ends the proxy process.
      this.#failed(job, 'shadow comparison failed', error)
      return
    }
    this.#count(job, example === undefined ? 'match' : 'mismatch')
    stats.record(example, config.keepExamples)
  }
}

/**
 * Creates the background runner of shadow comparisons shared by a gateway's routes.
 *
 * @example
 * ```ts
 * const shadows = createShadowRunner({ maxInFlight: 16 })
 * // after the primary's response went to the client:
 * shadows.submit({ config, stats, primary, shadow, request, response: outcome.captured })
 * ```
 */
export function createShadowRunner(options: ShadowRunnerOptions = {}): ShadowRunner {
  return new Runner(options)
}
