import { builtInKind } from './built-in-kind.js'
import { type Clock, systemClock } from './clock.js'
import { InvalidOptionError } from './errors.js'

// Small validators for constructor options. They run once per factory call, never per
// operation, so clarity beats speed here; the signal checks below are the exception (see them).

/**
 * Returns `value` if it is a number (not NaN) within [min, max], else throws naming `option`.
 * `Infinity` is in range when `max` is (the default): callers such as `withDeadline(Infinity)`
 * read it as no limit; pass a finite `max` where it has no meaning.
 */
export function checkNumber(
  option: string,
  value: unknown,
  min: number,
  max = Number.POSITIVE_INFINITY,
): number {
  if (typeof value !== 'number' || Number.isNaN(value) || value < min || value > max) {
    const range =
      max === Number.POSITIVE_INFINITY ? `a number >= ${min}` : `a number in [${min}, ${max}]`
    throw new InvalidOptionError(option, range, value)
  }
  return value
}

/** Returns `value` if it is an integer within [min, max], else throws naming `option`. */
export function checkInteger(
  option: string,
  value: unknown,
  min: number,
  max = Number.MAX_SAFE_INTEGER,
): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    // Past 2^53 a number is not an exact integer: say so, or "an integer >= 0" would refuse
    // what reads as one.
    const range =
      max !== Number.MAX_SAFE_INTEGER
        ? `an integer in [${min}, ${max}]`
        : typeof value === 'number' && value > max
          ? `an integer in [${min}, 2^53 - 1]`
          : `an integer >= ${min}`
    throw new InvalidOptionError(option, range, value)
  }
  return value
}

/** Returns `value` if it is one of `allowed`, else throws naming `option`. */
export function checkOneOf<T extends string>(
  option: string,
  value: unknown,
  allowed: readonly T[],
): T {
  if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) {
    throw new InvalidOptionError(option, `one of ${allowed.map((a) => `"${a}"`).join(', ')}`, value)
  }
  return value as T
}

/** Returns `value` if it is a function, else throws naming `option`. */
export function checkFunction<T extends (...args: never[]) => unknown>(
  option: string,
  value: unknown,
): T {
  if (typeof value !== 'function') throw new InvalidOptionError(option, 'a function', value)
  return value as T
}

/**
 * Whether `value` is a record: an object whose data is its properties, as JSON's `{...}`
 * parses. Not null, not an array, and not a built-in whose data is held elsewhere (in internal
 * slots: a Map, Date, Headers, Buffer, ...; {@link builtInKind} lists them). Read for its
 * properties, each of those is {}. Any other object is a record whatever its prototype: an
 * instance of the caller's own class, or `Object.create(defaults)` with inherited options, is
 * read like a plain object (refusing every object not made by `{...}` would break those).
 */
export function isObjectRecord(value: unknown): value is Record<string, unknown> {
  return (
    typeof value === 'object' &&
    value !== null &&
    !Array.isArray(value) &&
    builtInKind(value) === undefined
  )
}

/**
 * Returns `value` if it is a record ({@link isObjectRecord}), else throws `InvalidOptionError`
 * naming `option`. A built-in such as a Map or a Date is refused as `expected a plain object, got
 * a Map` (describeValue names the kind by the same test): it would be read as {}, its entries
 * dropped and every default used without a word. A function is refused too (`got a function`).
 */
export function checkObject(option: string, value: unknown): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw new InvalidOptionError(option, 'an object', value)
  if (builtInKind(value) !== undefined)
    throw new InvalidOptionError(option, 'a plain object', value)
  return value as Record<string, unknown>
}

/** Every key of every member of a union (`keyof` of a union is only the keys they share). */
type KeysOfEveryMember<T> = T extends unknown ? keyof T : never

/**
 * The keys of an options type as a set for {@link checkKnownOptions}. Written as a record with
 * every key of `T` (`optionKeys<RetryOptions>({ maxAttempts: true, ... })`) so that TypeScript
 * refuses the call when an option is added to the type but not here: a hand-written list
 * drifts, and a new option would then be refused as unknown. For a union of option shapes the
 * keys of every member are listed (plain `keyof` of a union keeps only the shared ones).
 */
export function optionKeys<T extends object>(
  keys: {
    readonly [K in KeysOfEveryMember<T>]-?: true
  },
): ReadonlySet<string> {
  return new Set(Object.keys(keys))
}

/**
 * Throws `InvalidOptionError` naming `${prefix}.${key}` for the first own key of `options` not in
 * `known` whose value is not undefined: a misspelt option (`olderThan`, `onRefuse`) was dropped
 * without a word, and its default silently used instead.
 */
export function checkKnownOptions(
  prefix: string,
  options: object,
  known: ReadonlySet<string>,
): void {
  // Object.keys, not Object.entries: it runs per event on the outbox's and event store's write
  // paths, and allocates no [key, value] pair per key (about 60 ns instead of 420 for 5 keys).
  const keys = Object.keys(options)
  for (let i = 0; i < keys.length; i++) {
    const key = keys[i]!
    if (known.has(key)) continue
    const value = (options as Record<string, unknown>)[key]
    if (value !== undefined)
      throw new InvalidOptionError(`${prefix}.${key}`, `one of ${[...known].join(', ')}`, value)
  }
}

/** What a known option set to null is refused with: only undefined means the default. */
const notNull = 'a value, not null (leave the option out, or undefined, for its default)'

/** How {@link checkOptionKeys} treats some keys. */
export interface OptionKeysCheck {
  /**
   * Keys that hold the caller's JSON rather than an option (a saga reply's `payload`): null is a
   * value there like any other.
   */
  readonly data?: ReadonlySet<string> | undefined
  /**
   * Name a null option by its bare key (`expectedVersion`) rather than `${prefix}.${key}`, where
   * the option's own check names it so.
   */
  readonly bareNames?: boolean
}

/**
 * The check of an options object: {@link checkKnownOptions}, then a known option set to `null`
 * is refused with `InvalidOptionError` naming it. Only `undefined` (or leaving the option out)
 * means the default: read with `??`, `maxAttempts: null` silently took the default and
 * `expectedVersion: null` appended at any version, so `loaded?.version ?? null` lost its
 * concurrency check.
 *
 * @example
 * ```ts
 * checkOptionKeys('options', options, startOptions)
 * ```
 */
export function checkOptionKeys(
  prefix: string,
  options: object,
  known: ReadonlySet<string>,
  how: OptionKeysCheck = {},
): void {
  checkKnownOptions(prefix, options, known)
  const record = options as Record<string, unknown>
  for (const key of known) {
    if (record[key] === null && how.data?.has(key) !== true)
      throw new InvalidOptionError(how.bareNames ? key : `${prefix}.${key}`, notNull, null)
  }
}

const clockExpected = 'a Clock (now, setTimeout and clearTimeout)'

function isClock(value: unknown): value is Clock {
  const clock = value as Partial<Clock> | null
  return (
    typeof value === 'object' &&
    clock !== null &&
    typeof clock.now === 'function' &&
    typeof clock.setTimeout === 'function' &&
    typeof clock.clearTimeout === 'function'
  )
}

/**
 * Returns `value` if it is a {@link Clock} (`now`, `setTimeout` and `clearTimeout` functions),
 * `systemClock` when it is undefined, else throws naming `option`.
 */
export function checkClock(option: string, value: unknown): Clock {
  if (value === undefined) return systemClock
  if (!isClock(value)) throw new InvalidOptionError(option, clockExpected, value)
  return value
}

/**
 * The rejection of a clock argument that is required (undefined is refused too, there is no
 * default) and not a {@link Clock}, naming `option`; undefined for a clock. For a function that
 * answers with a promise (`sleep`): a wrong clock would otherwise fail later with a bare
 * TypeError, or not at all when nothing had to wait.
 */
export function clockRefusal(option: string, value: unknown): Promise<never> | undefined {
  return isClock(value)
    ? undefined
    : Promise.reject(new InvalidOptionError(option, clockExpected, value))
}

/**
 * The refusal of a `signal` option that is neither undefined nor an AbortSignal. Such a value
 * would otherwise be ignored (a policy that never listens) or fail deep inside with a bare
 * TypeError (`addEventListener is not a function`), only in the call that happened to wait.
 */
function signalProblem(option: string, value: unknown): InvalidOptionError | undefined {
  return value === undefined || value instanceof AbortSignal || isSignalLike(value)
    ? undefined
    : new InvalidOptionError(option, 'an AbortSignal', value)
}

/**
 * An AbortSignal that fails `instanceof` (another realm's, such as a jsdom window's, or a
 * polyfill's): what is used of a signal is `aborted`, `reason` and its abort event, which such
 * a signal has. Node's own APIs take one on the same terms. Looked at only after `instanceof`
 * failed, so a native signal costs nothing more.
 */
function isSignalLike(value: unknown): boolean {
  if (typeof value !== 'object' || value === null) return false
  const signal = value as Partial<Record<keyof AbortSignal, unknown>>
  return (
    typeof signal.aborted === 'boolean' &&
    typeof signal.addEventListener === 'function' &&
    typeof signal.removeEventListener === 'function'
  )
}

/**
 * Returns `value` if it is an AbortSignal (or undefined: no signal), else throws naming
 * `option`. Unlike the validators above it runs per call (a signal comes with each call): one
 * `instanceof`, nothing allocated for a good value.
 *
 * @example
 * ```ts
 * const signal = checkSignal('request.signal', options.signal)
 * ```
 */
export function checkSignal(option: string, value: unknown): AbortSignal | undefined {
  const problem = signalProblem(option, value)
  if (problem !== undefined) throw problem
  return value as AbortSignal | undefined
}

/**
 * {@link checkSignal} for a function that answers with a promise and must reject, not throw:
 * the rejection to return when `value` is not an AbortSignal (nor undefined), else undefined.
 * Cheap enough for the policies' `execute`: one `instanceof`, nothing allocated for a good value.
 *
 * @example
 * ```ts
 * const refused = signalRefusal('retry.execute(signal)', signal)
 * if (refused !== undefined) return refused
 * ```
 */
export function signalRefusal(option: string, value: unknown): Promise<never> | undefined {
  const problem = signalProblem(option, value)
  return problem === undefined ? undefined : Promise.reject(problem)
}

/**
 * Whether `value` is a promise (any thenable), returned by an async callback where a
 * synchronous one is required (an upcaster, a decider's evolve, a saga's input parser); if so,
 * its outcome is dropped, since the caller refuses it: a rejection would otherwise be
 * unhandled, which ends a Node process.
 */
export function isDroppedPromise(value: unknown): boolean {
  if ((typeof value !== 'object' && typeof value !== 'function') || value === null) return false
  if (typeof (value as { then?: unknown }).then !== 'function') return false
  Promise.resolve(value).catch(() => {})
  return true
}

/**
 * Runs `build` (a factory that names its options from its own root, as `retry.maxAttempts`) and
 * renames an `InvalidOptionError` it throws to start at `prefix`, so a policy built inside
 * another capability's options is reported by the path the caller wrote
 * (`services.payments.retry.maxAttempts`, `relay.circuitBreaker.cooldownMs`). Other errors,
 * and errors already under `prefix`, pass through unchanged.
 */
export function withOptionPrefix<T>(prefix: string, build: () => T): T {
  try {
    return build()
  } catch (error) {
    if (error instanceof InvalidOptionError && !error.option.startsWith(`${prefix}.`)) {
      // The message is `<option>: expected <what>, got <value>`; keep <what>.
      const lead = `${error.option}: expected `
      const tail = error.message.lastIndexOf(', got ')
      const expected =
        error.message.startsWith(lead) && tail > lead.length
          ? error.message.slice(lead.length, tail)
          : 'a valid value'
      throw new InvalidOptionError(`${prefix}.${error.option}`, expected, error.value)
    }
    throw error
  }
}

/**
 * Whether `text` is a TCP port a driver can connect to: decimal digits (leading zeros allowed,
 * as the drivers read them with parseInt or Number) naming 1 to 65535. Port 0 is refused too:
 * no server listens on it (a URL parses with it, and every connection would then fail), and
 * amqplib reads it as its default port. @internal
 */
export function isPortNumber(text: string): boolean {
  if (!/^\d+$/.test(text)) return false
  const port = Number(text)
  return port >= 1 && port <= 65_535
}
