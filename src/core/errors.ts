import { builtInKind } from './built-in-kind.js'
import type { ErrorCode } from './error-codes.js'

// A registry-wide symbol so the brand survives two copies of breakwater in one process
// (duplicate installs), where `instanceof` would fail.
const brand = Symbol.for('breakwater.error')

/** Options shared by every breakwater error. */
export interface BreakwaterErrorOptions {
  /** The underlying error, if any. */
  readonly cause?: unknown | undefined
  /**
   * Whether the failure is worth retrying. The shared classifier reads this.
   * @default false
   */
  readonly retryable?: boolean | undefined
}

/**
 * Base class of every error breakwater throws. Carries a stable string `code` (see
 * `docs/errors.md`), a `retryable` hint used by the classifier, and the optional `cause`.
 *
 * @example
 * ```ts
 * import { BreakwaterError } from 'breakwater'
 * try { await policy.execute(() => fetchThing()) }
 * catch (error) { if (BreakwaterError.is(error) && error.code === 'BROKEN_CIRCUIT') useCache() }
 * ```
 */
export class BreakwaterError extends Error {
  /** The stable machine-readable code. */
  readonly code: ErrorCode
  /** Whether retrying may succeed. */
  readonly retryable: boolean
  readonly [brand] = true

  constructor(code: ErrorCode, message: string, options: BreakwaterErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.code = code
    this.retryable = options.retryable ?? false
    this.name = new.target.name
  }

  /** True for any breakwater error, even one thrown by another copy of the package. */
  static is(value: unknown): value is BreakwaterError {
    return (
      typeof value === 'object' &&
      value !== null &&
      (value as { [brand]?: unknown })[brand] === true
    )
  }
}

/** An option passed to a factory has a wrong type or value; thrown at construction. */
export class InvalidOptionError extends BreakwaterError {
  /** Dotted name of the option, e.g. `retry.maxAttempts`. */
  readonly option: string
  /** The value that was rejected. */
  readonly value: unknown
  /**
   * What the option takes, as the message words it (`a positive integer`): for a caller that
   * words the refusal its own way (a CLI naming its flag) without taking the message apart.
   */
  readonly expected: string

  constructor(option: string, expected: string, value: unknown) {
    super('INVALID_OPTION', `${option}: expected ${expected}, got ${describeValue(value)}`)
    this.option = option
    this.value = value
    this.expected = expected
  }
}

/** The caller's AbortSignal fired. `cause` holds the signal's reason. */
export class AbortedError extends BreakwaterError {
  constructor(reason?: unknown) {
    super('ABORTED', 'The operation was aborted by the caller', { cause: reason })
  }
}

/**
 * `error` with `cause` set as Error's own is (not enumerable, so a log of the error does not
 * repeat it), for an error whose constructor takes no cause, such as {@link InvalidOptionError}.
 */
export function withCause<E extends Error>(error: E, cause: unknown): E {
  Object.defineProperty(error, 'cause', {
    value: cause,
    writable: true,
    configurable: true,
    enumerable: false,
  })
  return error
}

/**
 * Renders a rejected value for an error message without dumping large objects. A built-in whose
 * data is not in its properties is named by its kind (`a Map`, `a Headers`, `a Uint8Array` for a
 * Buffer; the test isObjectRecord refuses them by), an instance of a class by its class (`an
 * instance of Limits`), any other object is `an object`. Never throws, whatever the value's
 * getters or Proxy traps do: it builds the message of an error.
 */
export function describeValue(value: unknown): string {
  if (typeof value === 'string')
    return JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}…` : value)
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint')
    return String(value)
  if (value === undefined || value === null) return String(value)
  if (typeof value === 'function') return 'a function'
  if (typeof value === 'symbol') return 'a symbol'
  try {
    // Array.isArray and a Proxy's length can throw (a revoked Proxy, a throwing trap).
    if (Array.isArray(value)) return `an array of ${value.length}`
  } catch {
    return 'an object'
  }
  return builtInKind(value) ?? classInstance(value) ?? 'an object'
}

// A class's name as JavaScript writes one: only such a name is copied into a message.
const classNamePattern = /^[A-Za-z_$][A-Za-z0-9_$]{0,59}$/

/**
 * `an instance of Limits` for an instance of a class (its prototype's own `constructor`, whose
 * `prototype` it is), else undefined: "expected a plain object, got an object" read as if a
 * plain object were refused. Reads data properties only (no getter runs); another realm's plain
 * object (its constructor is that realm's `Object`) stays an object.
 */
function classInstance(value: object): string | undefined {
  try {
    const proto: unknown = Object.getPrototypeOf(value)
    if (proto === null || proto === Object.prototype || typeof proto !== 'object') return undefined
    const maker: unknown = Object.getOwnPropertyDescriptor(proto, 'constructor')?.value
    if (typeof maker !== 'function' || maker.prototype !== proto) return undefined
    const name: unknown = Object.getOwnPropertyDescriptor(maker, 'name')?.value
    if (typeof name !== 'string' || name === 'Object' || !classNamePattern.test(name)) {
      return undefined
    }
    return `an instance of ${name}`
  } catch {
    return undefined
  }
}
