import { InvalidOptionError, withCause } from './errors.js'

// Checks on text that is about to be stored, run per operation (unlike the option validators
// in validate.ts), shared by the capabilities that write it.

/**
 * Whether `value` holds half of a UTF-16 surrogate pair. Such a string has no UTF-8 form: the
 * PostgreSQL driver sends U+FFFD in its place, so two different strings would be stored as one.
 */
export function hasLoneSurrogate(value: string): boolean {
  // With the u flag a well-formed pair is one code point, so only a lone half matches.
  return /\p{Cs}/u.test(value)
}

/**
 * Whether both databases store `value` exactly as given: PostgreSQL text cannot hold NUL (a
 * bare driver error there, which aborts the caller's transaction, while SQLite stores it), and
 * half of a surrogate pair has no UTF-8 form (stored as U+FFFD, so two different names or ids
 * would become one).
 */
export function isStorableText(value: string): boolean {
  return !value.includes('\u0000') && !hasLoneSurrogate(value)
}

/**
 * Checks a name or id about to be stored as text (a stream name, an event id, an outbox
 * topic, an inbox message id): a non-empty string that {@link isStorableText} accepts, or
 * `InvalidOptionError` naming `option`. Returns the value.
 */
export function checkStoredName(option: string, value: unknown): string {
  if (typeof value !== 'string' || value === '' || !isStorableText(value)) {
    throw new InvalidOptionError(
      option,
      'a non-empty string without NUL characters or lone surrogates',
      value,
    )
  }
  return value
}

/**
 * The most UTF-8 bytes of an id stored as an index key (an outbox event or aggregate id, an
 * inbox message id). PostgreSQL refuses an index entry over about 2,700 bytes with a bare
 * "index row size" error (54000), depending on how well the value compresses, while SQLite
 * stores any length: the cap keeps both databases alike, and an id one accepts storable by
 * the other.
 */
export const maxStoredIdBytes = 2048

/**
 * The most UTF-8 bytes of a name stored beside an id in the same index key (an inbox's
 * consumer, a SQL queue's topic and group): with an id of {@link maxStoredIdBytes} the entry
 * still fits what PostgreSQL takes.
 */
export const maxStoredNameBytes = 256

/** Whether `value` is longer than `maxBytes` in UTF-8. */
export function exceedsBytes(value: string, maxBytes: number): boolean {
  // A UTF-16 unit is at most 3 UTF-8 bytes: short text needs no count.
  return value.length * 3 > maxBytes && Buffer.byteLength(value, 'utf8') > maxBytes
}

/**
 * {@link checkStoredName} for text stored as an index key: also at most `maxBytes` UTF-8
 * bytes (see {@link maxStoredIdBytes}), or `InvalidOptionError` naming `option`.
 */
export function checkStoredKey(
  option: string,
  value: unknown,
  maxBytes = maxStoredIdBytes,
): string {
  const text = checkStoredName(option, value)
  if (exceedsBytes(text, maxBytes)) {
    throw new InvalidOptionError(
      option,
      `a non-empty string of at most ${maxBytes} UTF-8 bytes without NUL characters or lone surrogates`,
      text,
    )
  }
  return text
}

/**
 * The JSON text of `value`, stored by every capability that keeps JSON (outbox payloads, event
 * data and metadata, saga inputs, states, results and replies, idempotent results). Refused
 * with `InvalidOptionError` naming `option`, and in the message `expected`, what is wrong and
 * its path (`a Map at input.byId has no JSON form: it would be stored as {}`), is a value whose
 * JSON loses data, rather than stored as something other than the caller's value:
 * - a Map or Set (written as `{}`);
 * - a function or symbol (left out of an object, `null` in an array, no text at all alone),
 *   and an own enumerable symbol key (left out);
 * - a BigInt (JSON has no such number) or a cycle;
 * - NaN or ±Infinity, an invalid Date (its toJSON gives null), and `undefined` or a hole in an
 *   array: all written as a `null` the caller did not write;
 * - an object that is not plain, has no `toJSON` and no own enumerable fields (an instance
 *   holding only `#private` fields or getters, an Error, a RegExp, a Promise): written as `{}`.
 *   An empty marker instance looks the same and is refused too.
 * A `toJSON` or getter that throws is refused the same way, naming its path, with its error as
 * the `cause` (not enumerable), rather than escaping as the caller's bare Error.
 * Kept: plain objects (with or without a prototype), arrays, strings, finite numbers,
 * booleans, null, what `toJSON` returns (checked the same way; a valid `Date` as its ISO
 * string), boxed primitives, and class instances with own enumerable fields, which come back
 * as a plain object of those fields. `undefined` in an object is left out, as JSON does.
 *
 * One native `JSON.stringify` (no replacer, which costs several times more) and one walk that
 * allocates nothing unless it finds a problem.
 */
export function jsonTextOf(
  option: string,
  value: unknown,
  expected = 'a JSON-serializable value',
): string {
  let text: string | undefined
  try {
    text = JSON.stringify(value)
  } catch (error) {
    // A BigInt, a cycle or a throwing toJSON or getter: the walk says where.
    throw jsonRefusal(option, value, expected, lossOf(value), error)
  }
  if (text === undefined) {
    // An object whose toJSON gave undefined, a function or a symbol (an/a by their names).
    const what =
      value === undefined
        ? undefined
        : `${typeof value === 'object' ? 'an object whose toJSON gave undefined' : `a ${typeof value}`} has no JSON text`
    throw new InvalidOptionError(
      option,
      what === undefined ? expected : `${expected} (${what})`,
      value,
    )
  }
  const found = lossOf(value)
  if (found !== undefined) throw jsonRefusal(option, value, expected, found, undefined)
  return text
}

/** What JSON would lose, and where: `path` holds the steps from the root, innermost first. */
interface JsonLoss {
  readonly what: string
  readonly outcome: string
  readonly path: string[]
  /** The error a toJSON or getter threw, when that is what was found. */
  readonly thrown?: { readonly error: unknown }
}

/** The most steps of a path a refusal names in full (an even number: half from each end). */
const maxPathSteps = 16

/**
 * The refusal of `value`: `found` names what and where; without it (a toJSON that threw for
 * `JSON.stringify` only), `stringifyError` is the reason. A thrown error is the `cause`.
 */
function jsonRefusal(
  option: string,
  value: unknown,
  expected: string,
  found: JsonLoss | undefined,
  stringifyError: unknown,
): InvalidOptionError {
  let reason: string
  let cause: { readonly error: unknown } | undefined
  if (found === undefined) {
    reason = `its JSON form threw: ${String(stringifyError)}`
    cause = { error: stringifyError }
  } else {
    let path = option
    const steps = found.path.length
    // A path hundreds of levels long would fill the message: its first and last steps say where.
    for (let i = steps - 1; i >= 0; i--) {
      if (steps > maxPathSteps && i === steps - 1 - maxPathSteps / 2) {
        path += `…(${steps - maxPathSteps} more)…`
        i = maxPathSteps / 2 - 1
      }
      path += found.path[i]
    }
    cause = found.thrown
    reason =
      cause === undefined
        ? `${found.what} at ${path} has no JSON form: ${found.outcome}`
        : `${found.what} at ${path} threw: ${String(cause.error)}`
  }
  const error = new InvalidOptionError(option, `${expected} (${reason})`, value)
  return cause === undefined ? error : withCause(error, cause.error)
}

/**
 * The most levels of objects and arrays a stored JSON value may nest. The walk below recurses,
 * so without a bound a deep value overflowed its stack, and was refused at a depth that hung on
 * how deep the caller's stack already was, as "RangeError" at the root. 1,000 is what SQLite's
 * JSON functions and Jackson's default (`maxNestingDepth`) accept, so a value stored here can
 * also be read by the consumers most likely to meet it.
 */
export const maxJsonDepth = 1000

function tooDeep(): JsonLoss {
  return loss(
    `a value nested more than ${maxJsonDepth} levels deep`,
    `breakwater stores JSON up to ${maxJsonDepth} levels (SQLite's JSON functions and Jackson stop there)`,
  )
}

/** {@link jsonLossIn} from the root; what the caller's code throws on the way is a loss too. */
function lossOf(value: unknown): JsonLoss | undefined {
  try {
    return jsonLossIn(value)
  } catch (error) {
    // A Proxy's trap, say, outside a toJSON or a field read (those name their path).
    return { what: 'walking the value', outcome: '', path: [], thrown: { error } }
  }
}

const dateToJSON = Date.prototype.toJSON
const storedAsNull = 'it would be stored as null'

/**
 * The first part of `value` that `JSON.stringify` would lose (see {@link jsonTextOf}), or
 * undefined. It follows JSON's own rules: `toJSON` first, then own enumerable string keys;
 * `ancestors` are the objects on the way down, so a cycle is found rather than recursed into.
 */
function jsonLossIn(
  value: unknown,
  key: string | number = '',
  inArray = false,
  ancestors: object[] = [],
): JsonLoss | undefined {
  let v = value
  if ((typeof v === 'object' && v !== null) || typeof v === 'bigint') {
    try {
      const toJSON = (v as { toJSON?: unknown }).toJSON
      // A Date's gives its ISO string, or null when invalid: checked here, not called twice.
      if (toJSON === dateToJSON && v instanceof Date) {
        return Number.isNaN(v.getTime()) ? loss('an invalid Date', storedAsNull) : undefined
      }
      if (typeof toJSON === 'function') v = toJSON.call(v, String(key))
    } catch (error) {
      return { what: 'the toJSON', outcome: '', path: [], thrown: { error } }
    }
  }
  switch (typeof v) {
    case 'string':
    case 'boolean':
      return undefined
    case 'undefined':
      // Left out of an object; an array element (or a hole) is written as null.
      return inArray ? loss('undefined', storedAsNull) : undefined
    case 'number':
      return Number.isFinite(v) ? undefined : loss(String(v), storedAsNull)
    case 'bigint':
      return loss('a BigInt', 'JSON has no such number')
    case 'function':
    case 'symbol':
      return loss(`a ${typeof v}`, inArray ? storedAsNull : 'it would be left out')
  }
  if (v === null) return undefined
  const object = v as object
  if (ancestors.includes(object))
    return loss('a reference back to an enclosing object', 'JSON cannot hold a cycle')
  if (ancestors.length >= maxJsonDepth) return tooDeep()
  ancestors.push(object)
  const found = Array.isArray(object)
    ? lossInArray(object, ancestors)
    : lossInObject(object, inArray, ancestors)
  ancestors.pop()
  return found
}

function lossInArray(array: readonly unknown[], ancestors: object[]): JsonLoss | undefined {
  for (let i = 0; i < array.length; i++) {
    const found = fieldLoss(array, i, true, ancestors)
    if (found !== undefined) {
      found.path.push(`[${i}]`)
      return found
    }
  }
  return undefined
}

function lossInObject(object: object, inArray: boolean, ancestors: object[]): JsonLoss | undefined {
  const proto: unknown = Object.getPrototypeOf(object)
  // A plain object, of this realm or another (its prototype's prototype is null).
  if (proto !== Object.prototype && proto !== null && Object.getPrototypeOf(proto) !== null) {
    // JSON writes boxed primitives as the primitive.
    if (object instanceof Number) return jsonLossIn(object.valueOf(), '', inArray, ancestors)
    if (object instanceof String || object instanceof Boolean) return undefined
    if (object instanceof Map) return loss('a Map', 'it would be stored as {}')
    if (object instanceof Set) return loss('a Set', 'it would be stored as {}')
    if (Object.keys(object).length === 0) {
      const name = (object as { constructor?: { name?: unknown } }).constructor?.name
      return loss(
        `an instance of ${typeof name === 'string' && name !== '' ? name : 'a class'} without own enumerable fields or toJSON`,
        'it would be stored as {}',
      )
    }
  }
  for (const key of Object.keys(object)) {
    const found = fieldLoss(object, key, false, ancestors)
    if (found !== undefined) {
      found.path.push(/^[A-Za-z_$][\w$]*$/.test(key) ? `.${key}` : `[${JSON.stringify(key)}]`)
      return found
    }
  }
  // JSON leaves symbol keys out: { [Symbol('x')]: 1 } was stored as {}. Enumerable ones only,
  // as for string keys: a non-enumerable field (a library's brand) is not the caller's data.
  for (const symbol of Object.getOwnPropertySymbols(object)) {
    if (Object.prototype.propertyIsEnumerable.call(object, symbol)) {
      const found = loss('a symbol key', 'it would be left out')
      found.path.push(`[${String(symbol)}]`)
      return found
    }
  }
  return undefined
}

/** The loss in `holder[key]`, reading it as JSON does: a getter that throws is a loss too. */
function fieldLoss(
  holder: object,
  key: string | number,
  inArray: boolean,
  ancestors: object[],
): JsonLoss | undefined {
  let field: unknown
  try {
    field = (holder as Record<string | number, unknown>)[key]
  } catch (error) {
    return { what: 'reading the field', outcome: '', path: [], thrown: { error } }
  }
  return jsonLossIn(field, key, inArray, ancestors)
}

function loss(what: string, outcome: string): JsonLoss {
  return { what, outcome, path: [] }
}
