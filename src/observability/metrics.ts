import { type Clock, maxTimerDelayMs, type TimerHandle } from '../core/clock.js'
import { BreakwaterError, InvalidOptionError } from '../core/errors.js'
import {
  checkClock,
  checkFunction,
  checkInteger,
  checkObject,
  checkOptionKeys,
  optionKeys,
} from '../core/validate.js'

// A small Prometheus registry: counters, gauges and histograms with labels, rendered in the
// text exposition format 0.0.4 (what every Prometheus server and agent scrapes). Enough for
// breakwater's processes without pulling in a metrics library.

/**
 * Label values of one series, by label name. Numbers and booleans are rendered as text. Any
 * string is taken; control characters, U+2028, U+2029 and lone UTF-16 surrogates (which UTF-8
 * cannot hold) are rendered in a form that keeps every sample on one line and every series apart
 * (see {@link escapeLabelValue}).
 */
export type LabelValues = Readonly<Record<string, string | number | boolean>>

/** Options shared by every metric. */
export interface MetricOptions {
  /** The metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`, unique in the registry. Required. */
  readonly name: string
  /**
   * One line saying what it measures (shown as `# HELP`). Required. Line feeds are escaped;
   * other control characters (but tab) and lone surrogates are refused.
   */
  readonly help: string
  /**
   * The label names every series of the metric carries: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting
   * with `__`.
   * @default []
   */
  readonly labelNames?: readonly string[] | undefined
}

/** Options of {@link MetricsRegistry.counter}. */
export type CounterOptions = MetricOptions

/** Options of {@link MetricsRegistry.gauge}. */
export type GaugeOptions = MetricOptions

/** Options of {@link MetricsRegistry.histogram}. */
export interface HistogramOptions extends MetricOptions {
  /**
   * Upper bounds of the buckets, strictly increasing and finite (`+Inf` is always added; it
   * may also be given, as the last bound only).
   * @default [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
   */
  readonly buckets?: readonly number[] | undefined
}

/** A value that only goes up (resets only when the process restarts). */
export interface Counter {
  readonly name: string
  /** Adds `value` (>= 0, default 1) to the unlabelled series. */
  inc(value?: number): void
  /** Adds `value` (>= 0, default 1) to the series of `labels`. */
  inc(labels: LabelValues, value?: number): void
  /** The current value of a series (0 when it was never touched). */
  get(labels?: LabelValues): number
}

/** A value that goes up and down. */
export interface Gauge {
  readonly name: string
  /** Sets the unlabelled series. */
  set(value: number): void
  /** Sets the series of `labels`. */
  set(labels: LabelValues, value: number): void
  /** Adds `value` (finite, default 1) to a series. */
  inc(value?: number): void
  inc(labels: LabelValues, value?: number): void
  /** Subtracts `value` (finite, default 1) from a series. */
  dec(value?: number): void
  dec(labels: LabelValues, value?: number): void
  /** The current value of a series (0 when it was never set). */
  get(labels?: LabelValues): number
  /** Forgets every series (for gauges rebuilt at each collection). */
  reset(): void
}

/** A histogram's state for one series. */
export interface HistogramSnapshot {
  readonly count: number
  readonly sum: number
  /** Cumulative counts per upper bound, `+Inf` (Infinity) last. */
  readonly buckets: ReadonlyArray<{ readonly le: number; readonly count: number }>
}

/**
 * Counts observations into buckets (latencies, sizes).
 *
 * `observe` takes any number but NaN (refused with `INVALID_OPTION`, the series unchanged).
 * `+Inf` is counted in the `+Inf` bucket and makes `_sum` `+Inf` from then on, which is what
 * was observed and what Prometheus accepts (`-Inf` likewise, in the first bucket). `_sum` is
 * never NaN: an observation that would make it NaN (`-Inf` once it is `+Inf`, or the reverse) is
 * refused like NaN, the series unchanged.
 */
export interface Histogram {
  readonly name: string
  /** Records one observation in the unlabelled series; NaN is refused (see {@link Histogram}). */
  observe(value: number): void
  /** Records one observation in the series of `labels`; NaN is refused (see {@link Histogram}). */
  observe(labels: LabelValues, value: number): void
  /** The state of a series. */
  get(labels?: LabelValues): HistogramSnapshot
}

/** Options of {@link createMetricsRegistry}. */
export interface MetricsRegistryOptions {
  /**
   * Receives errors thrown by `onCollect` callbacks; rendering goes on with the values as they
   * are (also when this throws).
   * @default ignore them
   */
  readonly onCollectError?: ((error: unknown) => void) | undefined
  /**
   * How long a render waits for the `onCollect` callbacks. When it passes, the render goes on
   * with the values as they are and `onCollectError` gets a {@link MetricsCollectTimeoutError}:
   * a callback that never settles (a stats query to a database that stopped answering) would
   * otherwise hold every later scrape. A callback still running is not called again until it
   * settles; later renders wait for that run (again at most this long) instead.
   * @default 5000
   */
  readonly collectTimeoutMs?: number | undefined
  /**
   * Times `collectTimeoutMs`.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/**
 * `onCollect` callbacks were still running when `collectTimeoutMs` passed (code `TIMEOUT`,
 * retryable): the render went on with the values as they were. Given to `onCollectError`.
 */
export class MetricsCollectTimeoutError extends BreakwaterError {
  /** The collect timeout that passed, in milliseconds. */
  readonly timeoutMs: number
  /** How many callbacks were still running. */
  readonly pending: number

  constructor(timeoutMs: number, pending: number) {
    super(
      'TIMEOUT',
      `metrics collection: ${pending} onCollect callback${pending === 1 ? '' : 's'} still running after ${timeoutMs} ms; rendered the values as they were`,
      { retryable: true },
    )
    this.timeoutMs = timeoutMs
    this.pending = pending
  }
}

/** A set of metrics rendered together; see {@link createMetricsRegistry}. */
export interface MetricsRegistry {
  /** The HTTP `Content-Type` of {@link MetricsRegistry.render}'s output. */
  readonly contentType: string
  counter(options: CounterOptions): Counter
  gauge(options: GaugeOptions): Gauge
  histogram(options: HistogramOptions): Histogram
  /**
   * Registers a callback run before each render, to refresh gauges from their source (a
   * database query, a relay's snapshot); renders that overlap share one run. Returns a
   * function that removes it.
   */
  onCollect(callback: () => void | Promise<void>): () => void
  /**
   * Runs the collect callbacks, then renders every metric in the text format. A render that
   * starts while the callbacks of another are still running waits for those instead of running
   * them again, and no render waits longer than `collectTimeoutMs` for them.
   */
  render(): Promise<string>
}

/**
 * Wraps `register` so it runs once per registry and later calls get the same metrics. A
 * registry refuses a name twice, while the parts that use the metrics (services, handlers,
 * listeners) are created again on every config reload: the metrics belong to the registry.
 *
 * @example
 * ```ts
 * const relayMetrics = metricsPerRegistry((registry) => ({
 *   published: registry.counter({ name: 'relay_published_total', help: 'Events published.' }),
 * }))
 * relayMetrics(registry).published.inc()
 * ```
 */
export function metricsPerRegistry<M>(
  register: (registry: MetricsRegistry) => M,
): (registry: MetricsRegistry) => M {
  const byRegistry = new WeakMap<MetricsRegistry, M>()
  return (registry) => {
    let metrics = byRegistry.get(registry)
    if (metrics === undefined) {
      metrics = register(registry)
      byRegistry.set(registry, metrics)
    }
    return metrics
  }
}

const metricName = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/
const labelName = /^[a-zA-Z_][a-zA-Z0-9_]*$/
const defaultBuckets: readonly number[] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

/** The text exposition format's content type. */
export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'

// What escapeLabelValue writes as a mark: a lone surrogate (a high one with no low one after it,
// a low one with no high one before it), a control character other than the line feed (which
// has its own escape), U+2028 or U+2029; and a U+FFFD that the text after it would make read as
// one of their marks below.
const unencodable =
  // biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is the point
  /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]|[\u0000-\u0009\u000B-\u001F\u007F-\u009F\u2028\u2029]|\uFFFD(?=D[89A-F][0-9A-F]{2}|FFFD|00[01][0-9A-F]|007F|00[89][0-9A-F]|202[89])/g
// biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is the point
const markable = /[\u0000-\u0009\u000B-\u001F\u007F-\u009F\u2028\u2029\uD800-\uDFFF\uFFFD]/

/**
 * Escapes a label value: backslash, double quote and line feed as the format says; the other
 * control characters (C0, DEL, C1) and U+2028, U+2029, which the format lets through raw but
 * which scrapers and log shippers take as the end of a line (a carriage return, U+0085, U+2028
 * end a line for Python's `splitlines`, and a NUL or an escape sequence is no better), so a
 * sample would be cut in two; and lone UTF-16 surrogates, which UTF-8 cannot hold. Encoding
 * would turn every one of those into U+FFFD, so values that differ only in them (`'\uD800'`,
 * `'\uD801'`) would render as one series, twice (Prometheus refuses such a scrape) or merged.
 * The format has no escape for these but `\n` (Prometheus reads `\r` as a backslash and an
 * `r`), so each is written as U+FFFD followed by its code in four upper-case hex digits
 * (`'a\uD800'` renders as `a�D800`, `'a\rb'` as `a�000Db`), and a U+FFFD that is itself followed
 * by text that would read as such a code (`D800` to `DFFF`, `0000` to `001F`, `007F` to `009F`,
 * `2028`, `2029`) or by `FFFD` is written as `�FFFD` (`'�D800'` renders as `�FFFDD800`).
 * Everything else renders as it is, other U+FFFD included. So every sample stays on one line,
 * the rendering is valid UTF-8 and can be read back (no two distinct values share one); label
 * values are never refused for what they hold, so a value taken from a request cannot make the
 * caller's `inc()` or `observe()` throw.
 *
 * @example
 * ```ts
 * escapeLabelValue('say "hi"\n') // 'say \\"hi\\"\\n'
 * escapeLabelValue('/a\uD800') // '/a\uFFFDD800'
 * escapeLabelValue('a\rb') // 'a\uFFFD000Db'
 * ```
 */
export function escapeLabelValue(value: string): string {
  const encodable = markable.test(value)
    ? value.replace(unencodable, (c) =>
        c === '\uFFFD'
          ? '\uFFFDFFFD'
          : `\uFFFD${c.charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')}`,
      )
    : value
  return encodable.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')
}

/** What `# HELP` cannot carry (tab and line feed it can: the latter is escaped). */
const unwritableInHelp =
  // biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is the point
  /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]|[\u0000-\u0008\u000B-\u001F\u007F-\u009F\u2028\u2029]/

/** Escapes `# HELP` text: backslash and line feed. */
export function escapeHelp(text: string): string {
  return text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')
}

/** Renders a sample value as Prometheus expects (`+Inf`, `-Inf`, `NaN`). */
export function formatSampleValue(value: number): string {
  if (Number.isNaN(value)) return 'NaN'
  if (value === Number.POSITIVE_INFINITY) return '+Inf'
  if (value === Number.NEGATIVE_INFINITY) return '-Inf'
  return String(value)
}

type Kind = 'counter' | 'gauge' | 'histogram'

/** The keys MetricOptions takes (internal: not exported from the package root). */
export const metricOptions = optionKeys<MetricOptions>({ name: true, help: true, labelNames: true })
/** The keys HistogramOptions takes (internal: not exported from the package root). */
export const histogramOptions = optionKeys<HistogramOptions>({
  name: true,
  help: true,
  labelNames: true,
  buckets: true,
})
/** The keys MetricsRegistryOptions takes (internal: not exported from the package root). */
export const registryOptions = optionKeys<MetricsRegistryOptions>({
  onCollectError: true,
  collectTimeoutMs: true,
  clock: true,
})

/** What the registry needs of a metric. */
interface Renderable {
  readonly name: string
  readonly kind: Kind
  render(lines: string[]): void
}

abstract class Metric<S> implements Renderable {
  readonly name: string
  readonly help: string
  readonly labelNames: readonly string[]
  abstract readonly kind: Kind
  // Series by their label values as a JSON array: joining them with a separator would merge
  // two series whose values differ only in where that separator falls (`x\0` + `` and `x` +
  // `\0`), adding one's increments to the other.
  readonly series = new Map<string, { readonly labels: readonly string[]; state: S }>()

  constructor(
    kind: Kind,
    options: MetricOptions,
    known: ReadonlySet<string>,
    reservedLabels: readonly string[] = [],
  ) {
    checkObject(kind, options)
    // A misspelt labelNames gave a metric without labels, and every labelled call then failed.
    checkOptionKeys(kind, options, known)
    if (typeof options.name !== 'string' || !metricName.test(options.name))
      throw new InvalidOptionError(
        `${kind}.name`,
        'a name matching [a-zA-Z_:][a-zA-Z0-9_:]*',
        options.name,
      )
    this.name = options.name
    if (typeof options.help !== 'string' || options.help === '')
      throw new InvalidOptionError(`${kind}.help`, 'a non-empty string', options.help)
    // `# HELP` escapes only backslash and line feed; any other line break, control character
    // or lone surrogate would cut or corrupt the scrape, and help text is the author's, not
    // data, so it is refused here rather than marked like a label value.
    const unwritable = unwritableInHelp.exec(options.help)
    if (unwritable !== null)
      throw new InvalidOptionError(
        `${kind}.help`,
        `text without control characters other than tab and line feed, and without lone surrogates (found U+${unwritable[0].charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')})`,
        options.help,
      )
    this.help = options.help
    const names = options.labelNames ?? []
    if (!Array.isArray(names))
      throw new InvalidOptionError(`${kind}.labelNames`, 'an array of label names', names)
    const seen = new Set<string>()
    for (const label of names as readonly unknown[]) {
      if (
        typeof label !== 'string' ||
        !labelName.test(label) ||
        label.startsWith('__') ||
        reservedLabels.includes(label) ||
        seen.has(label)
      ) {
        throw new InvalidOptionError(
          `${kind}.labelNames`,
          `distinct label names matching [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__"${reservedLabels.length > 0 ? `, not ${reservedLabels.join(', ')}` : ''}`,
          label,
        )
      }
      seen.add(label)
    }
    this.labelNames = names
  }

  protected abstract initial(): S

  protected entry(labels: LabelValues | undefined): {
    readonly labels: readonly string[]
    state: S
  } {
    const values = this.#values(labels)
    const key = JSON.stringify(values)
    let entry = this.series.get(key)
    if (entry === undefined) {
      entry = { labels: values, state: this.initial() }
      this.series.set(key, entry)
    }
    return entry
  }

  protected peek(labels: LabelValues | undefined): S | undefined {
    return this.series.get(JSON.stringify(this.#values(labels)))?.state
  }

  #values(labels: LabelValues | undefined): string[] {
    if (labels === undefined) {
      if (this.labelNames.length === 0) return []
      throw new InvalidOptionError(
        `${this.name}.labels`,
        `values for ${this.labelNames.join(', ')}`,
        labels,
      )
    }
    if (typeof labels !== 'object' || labels === null)
      throw new InvalidOptionError(`${this.name}.labels`, 'an object of label values', labels)
    const values: string[] = []
    for (const label of this.labelNames) {
      const value = labels[label]
      if (typeof value !== 'string' && typeof value !== 'number' && typeof value !== 'boolean')
        throw new InvalidOptionError(
          `${this.name}.labels.${label}`,
          'a string, number or boolean',
          value,
        )
      values.push(String(value))
    }
    for (const label of Object.keys(labels)) {
      if (!this.labelNames.includes(label))
        throw new InvalidOptionError(`${this.name}.labels.${label}`, 'a declared label name', label)
    }
    return values
  }

  /** `name{a="x",b="y"}` with `extra` labels appended (histogram `le`). */
  protected sampleName(
    suffix: string,
    labels: readonly string[],
    extra?: readonly [string, string],
  ): string {
    const parts = labels.map((value, i) => `${this.labelNames[i]}="${escapeLabelValue(value)}"`)
    if (extra !== undefined) parts.push(`${extra[0]}="${escapeLabelValue(extra[1])}"`)
    return parts.length === 0
      ? `${this.name}${suffix}`
      : `${this.name}${suffix}{${parts.join(',')}}`
  }

  render(lines: string[]): void {
    lines.push(`# HELP ${this.name} ${escapeHelp(this.help)}`)
    lines.push(`# TYPE ${this.name} ${this.kind}`)
    // An unlabelled metric always shows its one series, 0 until touched, so dashboards and
    // rate() see it from the first scrape.
    if (this.labelNames.length === 0 && this.series.size === 0) this.entry(undefined)
    for (const { labels, state } of this.series.values()) this.renderSeries(lines, labels, state)
  }

  protected abstract renderSeries(lines: string[], labels: readonly string[], state: S): void
}

interface NumberState {
  value: number
}

function split(
  a: LabelValues | number | undefined,
  b: number | undefined,
  fallback: number | undefined,
): [LabelValues | undefined, number | undefined] {
  if (typeof a === 'number') return [undefined, a]
  return [a, b ?? fallback]
}

class CounterMetric extends Metric<NumberState> implements Counter {
  readonly kind = 'counter'

  constructor(options: CounterOptions) {
    super('counter', options, metricOptions)
  }

  protected initial(): NumberState {
    return { value: 0 }
  }

  inc(a?: LabelValues | number, b?: number): void {
    const [labels, value] = split(a, b, 1)
    if (typeof value !== 'number' || !(value >= 0) || value === Number.POSITIVE_INFINITY)
      throw new InvalidOptionError(`${this.name}.inc`, 'a finite number >= 0', value)
    this.entry(labels).state.value += value
  }

  get(labels?: LabelValues): number {
    return this.peek(labels)?.value ?? 0
  }

  protected renderSeries(lines: string[], labels: readonly string[], state: NumberState): void {
    lines.push(`${this.sampleName('', labels)} ${formatSampleValue(state.value)}`)
  }
}

class GaugeMetric extends Metric<NumberState> implements Gauge {
  readonly kind = 'gauge'

  constructor(options: GaugeOptions) {
    super('gauge', options, metricOptions)
  }

  protected initial(): NumberState {
    return { value: 0 }
  }

  set(a: LabelValues | number, b?: number): void {
    const [labels, value] = split(a, b, undefined)
    if (typeof value !== 'number')
      throw new InvalidOptionError(`${this.name}.set`, 'a number', value)
    this.entry(labels).state.value = value
  }

  // A step must be finite: NaN or ±Infinity added once would stay in the series for good
  // (no later step brings it back), while set() replaces the value and may take any.
  inc(a?: LabelValues | number, b?: number): void {
    const [labels, value] = split(a, b, 1)
    if (typeof value !== 'number' || !Number.isFinite(value))
      throw new InvalidOptionError(`${this.name}.inc`, 'a finite number', value)
    this.entry(labels).state.value += value
  }

  dec(a?: LabelValues | number, b?: number): void {
    const [labels, value] = split(a, b, 1)
    if (typeof value !== 'number' || !Number.isFinite(value))
      throw new InvalidOptionError(`${this.name}.dec`, 'a finite number', value)
    this.entry(labels).state.value -= value
  }

  get(labels?: LabelValues): number {
    return this.peek(labels)?.value ?? 0
  }

  reset(): void {
    this.series.clear()
  }

  protected renderSeries(lines: string[], labels: readonly string[], state: NumberState): void {
    lines.push(`${this.sampleName('', labels)} ${formatSampleValue(state.value)}`)
  }
}

interface HistogramState {
  count: number
  sum: number
  /** Non-cumulative counts per finite bucket; observations above the last go only to count. */
  readonly counts: number[]
}

class HistogramMetric extends Metric<HistogramState> implements Histogram {
  readonly kind = 'histogram'
  readonly buckets: readonly number[]

  constructor(options: HistogramOptions) {
    super('histogram', options, histogramOptions, ['le'])
    const buckets = options.buckets ?? defaultBuckets
    if (!Array.isArray(buckets))
      throw new InvalidOptionError('histogram.buckets', 'an array of numbers', buckets)
    // A trailing +Inf is the bucket every histogram has; anywhere else the list is not increasing.
    const finite =
      buckets.at(-1) === Number.POSITIVE_INFINITY
        ? (buckets as readonly unknown[]).slice(0, -1)
        : (buckets as readonly unknown[])
    for (let i = 0; i < finite.length; i++) {
      const b = finite[i]
      const previous = finite[i - 1]
      if (
        typeof b !== 'number' ||
        !Number.isFinite(b) ||
        (typeof previous === 'number' && b <= previous)
      )
        throw new InvalidOptionError(
          'histogram.buckets',
          'strictly increasing finite numbers',
          buckets,
        )
    }
    this.buckets = finite as number[]
  }

  protected initial(): HistogramState {
    return { count: 0, sum: 0, counts: this.buckets.map(() => 0) }
  }

  observe(a: LabelValues | number, b?: number): void {
    const [labels, value] = split(a, b, undefined)
    if (typeof value !== 'number' || Number.isNaN(value))
      throw new InvalidOptionError(`${this.name}.observe`, 'a number', value)
    const state = this.entry(labels).state
    // NaN in _sum would stay for good (no later observation brings it back), so the one
    // infinity that makes it (the opposite of a sum that already is infinite) is refused too,
    // before anything is counted.
    const sum = state.sum + value
    if (Number.isNaN(sum))
      throw new InvalidOptionError(
        `${this.name}.observe`,
        `a number that leaves the sum (${formatSampleValue(state.sum)}) a number`,
        value,
      )
    state.count++
    state.sum = sum
    for (let i = 0; i < this.buckets.length; i++) {
      if (value <= this.buckets[i]!) {
        state.counts[i]!++
        break
      }
    }
  }

  get(labels?: LabelValues): HistogramSnapshot {
    const state = this.peek(labels) ?? this.initial()
    let running = 0
    const buckets = this.buckets.map((le, i) => {
      running += state.counts[i]!
      return { le, count: running }
    })
    buckets.push({ le: Number.POSITIVE_INFINITY, count: state.count })
    return { count: state.count, sum: state.sum, buckets }
  }

  protected renderSeries(lines: string[], labels: readonly string[], state: HistogramState): void {
    let running = 0
    for (let i = 0; i < this.buckets.length; i++) {
      running += state.counts[i]!
      const le = formatSampleValue(this.buckets[i]!)
      lines.push(`${this.sampleName('_bucket', labels, ['le', le])} ${running}`)
    }
    lines.push(`${this.sampleName('_bucket', labels, ['le', '+Inf'])} ${state.count}`)
    lines.push(`${this.sampleName('_sum', labels)} ${formatSampleValue(state.sum)}`)
    lines.push(`${this.sampleName('_count', labels)} ${state.count}`)
  }
}

class Registry implements MetricsRegistry {
  readonly contentType = PROMETHEUS_CONTENT_TYPE
  readonly #metrics = new Map<string, Renderable>()
  readonly #collectors = new Set<() => void | Promise<void>>()
  readonly #onCollectError: (error: unknown) => void
  readonly #collectTimeoutMs: number
  readonly #clock: Clock
  // The run of each callback still in flight: a later collection waits for it rather than
  // calling the callback again, so a stuck source does not get one more call per scrape.
  readonly #running = new Map<() => void | Promise<void>, Promise<void>>()
  #collecting: Promise<void> | undefined

  constructor(options: MetricsRegistryOptions) {
    checkObject('metricsRegistry', options)
    // A misspelt option was dropped without a word and its default used instead.
    checkOptionKeys('metricsRegistry', options, registryOptions)
    this.#collectTimeoutMs = checkInteger(
      'metricsRegistry.collectTimeoutMs',
      options.collectTimeoutMs ?? 5_000,
      1,
      maxTimerDelayMs,
    )
    this.#clock = checkClock('metricsRegistry.clock', options.clock)
    this.#onCollectError =
      options.onCollectError === undefined
        ? () => {}
        : checkFunction<(error: unknown) => void>(
            'metricsRegistry.onCollectError',
            options.onCollectError,
          )
  }

  counter(options: CounterOptions): Counter {
    return this.#add(new CounterMetric(options))
  }

  gauge(options: GaugeOptions): Gauge {
    return this.#add(new GaugeMetric(options))
  }

  histogram(options: HistogramOptions): Histogram {
    return this.#add(new HistogramMetric(options))
  }

  onCollect(callback: () => void | Promise<void>): () => void {
    checkFunction('callback', callback)
    const entry = (): void | Promise<void> => callback()
    this.#collectors.add(entry)
    return () => {
      this.#collectors.delete(entry)
    }
  }

  async render(): Promise<string> {
    // Scrapes that overlap a collection in flight wait for it rather than start their own: a
    // slow source (a database under stress) would otherwise get one more query per scrape,
    // piling up while it is slowest.
    // Cleared by the run itself, before any waiting render resumes, so the next scrape collects
    // afresh. Not inside #collect: with no callbacks it ends before its first await, so a clear
    // there would come before this assignment, and the settled run would stand for good (no
    // callback registered later would ever be called).
    if (this.#collecting === undefined) {
      const run: Promise<void> = this.#collect().finally(() => {
        if (this.#collecting === run) this.#collecting = undefined
      })
      this.#collecting = run
    }
    await this.#collecting
    const lines: string[] = []
    for (const metric of this.#metrics.values()) metric.render(lines)
    return lines.length === 0 ? '' : `${lines.join('\n')}\n`
  }

  async #collect(): Promise<void> {
    let timer: TimerHandle | undefined
    try {
      if (this.#collectors.size === 0) return
      let pending = this.#collectors.size
      const runs = [...this.#collectors].map((collect) =>
        this.#run(collect).then(() => {
          pending--
        }),
      )
      const timedOut = new Promise<true>((resolve) => {
        timer = this.#clock.setTimeout(() => resolve(true), this.#collectTimeoutMs)
      })
      if ((await Promise.race([Promise.all(runs), timedOut])) === true)
        this.#report(new MetricsCollectTimeoutError(this.#collectTimeoutMs, pending))
    } finally {
      if (timer !== undefined) this.#clock.clearTimeout(timer)
    }
  }

  // Never rejects: a callback's failure goes to onCollectError.
  #run(collect: () => void | Promise<void>): Promise<void> {
    let run = this.#running.get(collect)
    if (run === undefined) {
      let settled = false
      run = (async () => {
        try {
          await collect()
        } catch (error) {
          this.#report(error)
        } finally {
          settled = true
          this.#running.delete(collect)
        }
      })()
      // One that threw at once has settled already: it must not stay in the map for good.
      if (!settled) this.#running.set(collect, run)
    }
    return run
  }

  #report(error: unknown): void {
    // The reporter is the caller's code too: its throw must not cost the render.
    try {
      this.#onCollectError(error)
    } catch {}
  }

  #add<M extends Renderable>(metric: M): M {
    // A histogram also owns <name>_bucket, _sum and _count; none may clash.
    const owned = (m: Renderable): string[] =>
      m.kind === 'histogram'
        ? [m.name, `${m.name}_bucket`, `${m.name}_sum`, `${m.name}_count`]
        : [m.name]
    const taken = new Set([...this.#metrics.values()].flatMap(owned))
    for (const name of owned(metric)) {
      if (taken.has(name))
        throw new InvalidOptionError(
          `${metric.kind}.name`,
          'a name not registered yet',
          metric.name,
        )
    }
    this.#metrics.set(metric.name, metric)
    return metric
  }
}

/**
 * Creates a metrics registry rendered in the Prometheus text format (version 0.0.4): counters,
 * gauges and histograms with labels, `# HELP` and `# TYPE` lines, label values and help text
 * escaped, `+Inf`/`-Inf`/`NaN` spelled as Prometheus reads them. Serve it with
 * `startMetricsServer`. An unknown (misspelt) option, of the registry or of a metric
 * (`counter`, `gauge`, `histogram`), is refused with `InvalidOptionError` (`INVALID_OPTION`)
 * naming it.
 *
 * @example
 * ```ts
 * const registry = createMetricsRegistry()
 * const published = registry.counter({ name: 'app_published_total', help: 'Events published.' })
 * const latency = registry.histogram({ name: 'app_publish_seconds', help: 'Publish latency.', labelNames: ['broker'] })
 * published.inc(10)
 * latency.observe({ broker: 'nats' }, 0.012)
 * const text = await registry.render()
 * ```
 */
export function createMetricsRegistry(options: MetricsRegistryOptions = {}): MetricsRegistry {
  return new Registry(options)
}
