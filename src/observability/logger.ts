import { types } from 'node:util'
import type { Clock } from '../core/clock.js'
import { BreakwaterError, InvalidOptionError } from '../core/errors.js'
import {
  checkClock,
  checkObject,
  checkOneOf,
  checkOptionKeys,
  optionKeys,
} from '../core/validate.js'
import { isSecretKey, normalizeKey, REDACTED, redactSecrets } from './redact.js'
import { writeSafely } from './safe-write.js'

/** The severity of a log line, lowest first. */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error'

/** The threshold of a logger: a {@link LogLevel}, or `'silent'` for nothing at all. */
export type LogThreshold = LogLevel | 'silent'

/** Every {@link LogThreshold}, lowest first. */
export const logThresholds: readonly LogThreshold[] = ['debug', 'info', 'warn', 'error', 'silent']

/** The structured fields of a log line. */
export type LogFields = Readonly<Record<string, unknown>>

/**
 * Where a logger writes; `process.stdout` and any writable stream fit. A `write` that throws
 * (a closed pipe, a full disk) never reaches the code that logs: the line is dropped, and the
 * output's first failure is reported once to `process.stderr` (later ones are dropped silently,
 * so a broken output cannot flood it).
 */
export interface LogOutput {
  write(text: string): unknown
}

/** A structured logger; see {@link createJsonLogger}. */
export interface Logger {
  /** The threshold: lines below it are dropped. */
  readonly level: LogThreshold
  /** True when a line at `level` would be written (to skip building costly fields). */
  isLevelEnabled(level: LogLevel): boolean
  debug(msg: string, fields?: LogFields): void
  info(msg: string, fields?: LogFields): void
  warn(msg: string, fields?: LogFields): void
  error(msg: string, fields?: LogFields): void
  /**
   * A logger that adds `fields` to every line (its own fields win over the parent's). Fields
   * are read once, here; one whose getter or proxy trap throws is bound as `[unserializable]`
   * (the others are kept), and an object whose keys cannot be listed (a revoked proxy) binds
   * `logError: 'unserializable'`, so making a child never throws on what `fields` holds. Only a
   * `fields` that is not an object is refused (`INVALID_OPTION`).
   */
  child(fields: LogFields): Logger
}

/** Options of {@link createJsonLogger}. */
export interface JsonLoggerOptions {
  /**
   * Lines below this level are dropped.
   * @default 'info'
   */
  readonly level?: LogThreshold | undefined
  /**
   * Receives one line (JSON object plus `\n`) per call.
   * @default process.stdout
   */
  readonly output?: LogOutput | undefined
  /**
   * Fields added to every line, e.g. `{ service: 'relay' }`.
   * @default {}
   */
  readonly fields?: LogFields | undefined
  /**
   * More field names whose values are secrets, on top of the built-in ones (password, secret,
   * token, API key, authorization, cookie, ...: see `isSecretKey`). Compared case-insensitively,
   * ignoring `-`, `_` and `.`.
   * @default []
   */
  readonly redactKeys?: readonly string[] | undefined
  /**
   * Source of each line's `time`.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** The keys JsonLoggerOptions takes (internal: not exported from the package root). */
export const loggerOptions = optionKeys<JsonLoggerOptions>({
  level: true,
  output: true,
  fields: true,
  redactKeys: true,
  clock: true,
})

const rank: Readonly<Record<LogThreshold, number>> = {
  debug: 10,
  info: 20,
  warn: 30,
  error: 40,
  silent: 100,
}
const reserved = new Set(['level', 'time', 'msg'])
const maxDepth = 8
const maxStringLength = 8_192
const maxArrayItems = 100
// About how much text one call's fields may write (strings counted as their clipped length,
// other values and names by a rough size). Depth, array and string cuts alone leave a line
// unbounded: a Map or object with a million entries, or a graph of shared (not circular)
// references, which is width^depth values written out. Past it, values are written as
// `[truncated]` and a Map or object stops at its first entry over the budget.
const maxLineBudget = 1_048_576
const truncated = '[truncated]'
// What a value that throws when read is logged as.
const unserializable = '[unserializable]'

/** One call's walk over its fields: the objects on the current path, and the budget left. */
interface Walk {
  readonly seen: WeakSet<object>
  left: number
}

interface LoggerCore {
  readonly threshold: number
  readonly level: LogThreshold
  readonly output: LogOutput
  readonly clock: Clock
  readonly extra: ReadonlySet<string>
  /** How each field name seen so far is written (bounded): log lines repeat the same names. */
  readonly keys: Map<string, FieldName>
}

/** How a field name is written: whether its value is a secret, and the name itself, masked. */
interface FieldName {
  readonly secret: boolean
  readonly shown: string
}

const maxCachedKeys = 1_024

// Normalizing a name and matching it against every secret suffix cost about 40% of a line.
// A name is written too, so it is masked as a string value is: a Map of pools keyed by their
// connection URL would otherwise write each URL's password.
function fieldName(key: string, core: LoggerCore): FieldName {
  let name = core.keys.get(key)
  if (name === undefined) {
    // Cut short as a string value is (a name is written too: a 5 MB key made a 5 MB line).
    name = { secret: isSecretKey(key, core.extra), shown: clip(key) }
    // A long name is not kept: the cache would hold every such key for the process's life.
    if (core.keys.size < maxCachedKeys && key.length <= maxListedName) core.keys.set(key, name)
  }
  return name
}

class JsonLogger implements Logger {
  readonly #core: LoggerCore
  // Fields bound by the options and child(), sanitized once when bound.
  readonly #bound: Record<string, unknown>

  constructor(core: LoggerCore, bound: Record<string, unknown>) {
    this.#core = core
    this.#bound = bound
  }

  get level(): LogThreshold {
    return this.#core.level
  }

  isLevelEnabled(level: LogLevel): boolean {
    return rank[level] >= this.#core.threshold
  }

  debug(msg: string, fields?: LogFields): void {
    this.#write('debug', msg, fields)
  }

  info(msg: string, fields?: LogFields): void {
    this.#write('info', msg, fields)
  }

  warn(msg: string, fields?: LogFields): void {
    this.#write('warn', msg, fields)
  }

  error(msg: string, fields?: LogFields): void {
    this.#write('error', msg, fields)
  }

  child(fields: LogFields): Logger {
    try {
      checkObject('fields', fields)
    } catch (error) {
      // Not an object is the caller's mistake; an object that throws when looked at (a revoked
      // proxy throws even in Array.isArray) is a value to log as unserializable, like any other.
      if (error instanceof InvalidOptionError) throw error
    }
    return new JsonLogger(this.#core, { ...this.#bound, ...sanitizeFields(fields, this.#core) })
  }

  #write(level: LogLevel, msg: string, fields: LogFields | undefined): void {
    if (rank[level] < this.#core.threshold) return
    let text: string
    try {
      text = clip(String(msg))
    } catch {
      // A msg whose toString throws: logging, often in an error path, must not.
      text = unserializable
    }
    const line = Object.assign(
      fieldsObject(),
      { level, time: timeOf(this.#core.clock), msg: text },
      this.#bound,
    )
    if (fields !== undefined) Object.assign(line, sanitizeFields(fields, this.#core))
    try {
      text = JSON.stringify(line)
    } catch {
      // sanitize() leaves nothing JSON.stringify can throw on; this is a last resort.
      text = JSON.stringify({ level, time: line.time, msg: line.msg, logError: 'unserializable' })
    }
    writeSafely(this.#core.output, `${escapeLineBreaks(text)}\n`)
  }
}

// U+0085, U+2028 and U+2029 are valid unescaped in JSON, and JSON.stringify leaves them so, but
// line-oriented readers end a line there (Python's str.splitlines(), log shippers that split on
// Unicode line breaks) and cut the record in two halves that do not parse. JSON's structure is
// ASCII, so they only occur inside strings, where the escape reads back as the same character.
const jsonKeptLineBreaks = /[\u0085\u2028\u2029]/g
const lineBreakEscapes: Readonly<Record<string, string>> = {
  '\u0085': '\\u0085',
  '\u2028': '\\u2028',
  '\u2029': '\\u2029',
}

function escapeLineBreaks(json: string): string {
  // Looked for first: three includes cost a fraction of what the regular expression's scan
  // does, and nearly every line (a proxy's access line per request) holds none of them.
  if (!json.includes('\u2028') && !json.includes('\u2029') && !json.includes('\u0085')) return json
  return json.replace(jsonKeptLineBreaks, (c) => lineBreakEscapes[c]!)
}

// A line's time. A clock whose time no Date holds (NaN, past ±8.64e15 ms: a ManualClock moved
// that far) makes toISOString throw, and so may the clock itself: the line is written all the
// same, with the time Date itself shows for such a value.
function timeOf(clock: Clock): string {
  try {
    const date = new Date(clock.now())
    return Number.isNaN(date.getTime()) ? 'Invalid Date' : date.toISOString()
  } catch {
    return 'Invalid Date'
  }
}

// An object for written fields without a prototype: on a plain object, setting a field named
// `__proto__` (an own property of JSON.parse's output, such as a logged request body) would
// replace its prototype instead, and the field would be left out of the line.
function fieldsObject(): Record<string, unknown> {
  return Object.create(null) as Record<string, unknown>
}

// Fields named like the line's own keys are kept under a `fields.` prefix rather than
// overwriting level, time or msg, which every consumer relies on. Never throws (a log call and
// child() must not): a field whose getter or proxy trap throws is written as unserializable,
// as a nested value is, and the other fields are kept; a fields object whose keys cannot even
// be listed (a revoked proxy, an ownKeys trap that throws) becomes `logError`.
function sanitizeFields(fields: LogFields, core: LoggerCore): Record<string, unknown> {
  const out = fieldsObject()
  let keys: string[]
  try {
    keys = Object.keys(fields)
  } catch {
    out.logError = 'unserializable'
    return out
  }
  const walk: Walk = { seen: new WeakSet<object>(), left: maxLineBudget }
  for (const key of keys) {
    const { secret, shown } = fieldName(key, core)
    const name = reserved.has(key) ? `fields.${key}` : shown
    let value: unknown
    try {
      value = fields[key]
    } catch {
      out[name] = secret ? REDACTED : unserializable
      continue
    }
    if (value !== undefined) out[name] = secret ? REDACTED : sanitize(value, core, 0, walk)
  }
  return out
}

// Masked first, then cut short: a cut inside a credential would leave what masks it (the '@'
// after a URL's password, the token after 'Bearer') beyond the cut, and its first part written.
// Never between the two halves of a surrogate pair (an emoji, a CJK extension character): the
// first half alone is written `\ud83d`, which strict JSON readers (Rust's serde_json, so
// Vector) refuse, losing the whole line. For the same reason a lone surrogate the text already
// held becomes U+FFFD (see wellFormed).
function clip(text: string): string {
  const masked = wellFormed(redactSecrets(text))
  if (masked.length <= maxStringLength) return masked
  const splitsPair =
    isHighSurrogate(masked.charCodeAt(maxStringLength - 1)) &&
    isLowSurrogate(masked.charCodeAt(maxStringLength))
  return `${masked.slice(0, splitsPair ? maxStringLength - 1 : maxStringLength)}…`
}

// A lone surrogate (half of a pair: a string cut by code units, a bad decode) is written by
// JSON.stringify as an escape such as `\ud800`, on which strict JSON readers (serde_json, so
// Vector) refuse the whole line: it is written as U+FFFD instead, as a UTF-8 encoder writes it.
// String.prototype.toWellFormed is in Node 20, but typed only in lib ES2024, past this
// project's ES2023.
const wellFormed = (text: string): string =>
  (text as string & { toWellFormed(): string }).toWellFormed()

const isHighSurrogate = (unit: number): boolean => unit >= 0xd800 && unit <= 0xdbff
const isLowSurrogate = (unit: number): boolean => unit >= 0xdc00 && unit <= 0xdfff

/** Turns any value into plain JSON data with secrets hidden. */
function sanitize(value: unknown, core: LoggerCore, depth: number, walk: Walk): unknown {
  if (walk.left <= 0) return truncated
  walk.left -= 8
  switch (typeof value) {
    case 'string': {
      const text = clip(value)
      walk.left -= text.length
      return text
    }
    case 'number':
      return Number.isFinite(value) ? value : String(value)
    case 'boolean':
      return value
    case 'bigint':
      return value.toString()
    case 'undefined':
      return null
    case 'symbol':
      return value.toString()
    case 'function':
      return `[function ${value.name || 'anonymous'}]`
  }
  if (value === null) return null
  try {
    return sanitizeObject(value as object, core, depth, walk)
  } catch {
    // A getter, toJSON or proxy trap that throws (a revoked proxy, an object read in the wrong
    // state): the value is left out rather than the log call throwing.
    return unserializable
  }
}

function sanitizeObject(object: object, core: LoggerCore, depth: number, walk: Walk): unknown {
  const { seen } = walk
  if (seen.has(object)) return '[circular]'
  if (depth >= maxDepth) return '[too deep]'
  // util.types rather than instanceof for Date, Error, Map and Set: a value made in another
  // realm (a vm context, a sandbox) is no instance of this realm's constructors, and an Error,
  // Map or Set from there was written `{}` (their contents are no enumerable properties).
  if (types.isDate(object))
    return Number.isNaN(object.getTime()) ? 'Invalid Date' : object.toISOString()
  // As a string (masked, cut short, counted against the line's budget): a data: URL holds its
  // whole payload in its href.
  if (object instanceof URL) return sanitize(object.href, core, depth, walk)
  // Binary data as its size: its bytes say nothing a reader can use, and may be megabytes.
  if (ArrayBuffer.isView(object) || types.isAnyArrayBuffer(object))
    return `[${object.byteLength} bytes]`
  // As their text or value (masked, cut short): their data is in internal slots, not properties,
  // so they were written `{}`.
  if (types.isRegExp(object))
    return sanitize(RegExp.prototype.toString.call(object), core, depth, walk)
  if (types.isBoxedPrimitive(object)) return sanitize(unboxed(object), core, depth, walk)
  seen.add(object)
  try {
    if (object instanceof Error || types.isNativeError(object))
      return serializeError(object as Error, core, depth, walk)
    if (Array.isArray(object)) {
      const secrets = secretValueIndexes(object, core)
      const items = object
        .slice(0, maxArrayItems)
        .map((item, i) => (secrets?.has(i) ? REDACTED : sanitize(item, core, depth + 1, walk)))
      if (object.length > maxArrayItems) items.push(`[${object.length - maxArrayItems} more]`)
      return items
    }
    if (types.isMap(object)) {
      const map = object as Map<unknown, unknown>
      return hasObjectKey(map)
        ? entryList(map, core, depth, walk)
        : pairsObject(map, core, depth, walk)
    }
    if (types.isSet(object)) return sanitize([...(object as Set<unknown>)], core, depth, walk)
    const toJSON = (object as { toJSON?: unknown }).toJSON
    if (typeof toJSON === 'function') {
      return sanitize((toJSON as () => unknown).call(object), core, depth + 1, walk)
    }
    // Only an object made by a class may be a built-in whose data is in internal slots: a plain
    // object (nearly every logged one) is not looked at twice.
    const prototype: unknown = Object.getPrototypeOf(object)
    const plain = prototype === Object.prototype || prototype === null
    const kind = plain ? 'Object' : kindOf(object)
    // WHATWG Headers (fetch's, or another undici copy's) and URLSearchParams: their pairs, as a
    // Map's (a secret header's or query parameter's value redacted by its name).
    if ((kind === 'Headers' || kind === 'URLSearchParams') && hasEntries(object))
      return pairsObject(object.entries(), core, depth, walk)
    const out = fieldsObject()
    let written = false
    for (const [key, v] of Object.entries(object)) {
      if (v === undefined) continue
      if (overBudget(out, walk)) break
      const { secret, shown } = fieldName(key, core)
      walk.left -= shown.length + 4
      out[shown] = secret ? REDACTED : sanitize(v, core, depth + 1, walk)
      written = true
    }
    // A built-in with nothing in its own properties (an AbortSignal, a Promise, a WeakMap, a
    // Blob) says at least what it is; `{}` said nothing. An instance of a class of the
    // program's own (tagged `Object`) is still `{}`, as JSON.stringify writes it.
    if (!written && kind !== 'Object') return `[${kind}]`
    return out
  } finally {
    seen.delete(object)
  }
}

// The primitive a boxed one holds (`new String('x')`, `Object(1n)`), read through this realm's
// methods, which read the internal slot and so work on another realm's boxes too.
function unboxed(object: object): unknown {
  if (types.isStringObject(object)) return String.prototype.valueOf.call(object)
  if (types.isNumberObject(object)) return Number.prototype.valueOf.call(object)
  if (types.isBooleanObject(object)) return Boolean.prototype.valueOf.call(object)
  if (types.isBigIntObject(object)) return BigInt.prototype.valueOf.call(object)
  return Symbol.prototype.valueOf.call(object as unknown as symbol)
}

// What Object.prototype.toString calls an object (its Symbol.toStringTag, or its built-in
// kind): `Headers`, `AbortSignal`, `Object` for a class of the program's own.
function kindOf(object: object): string {
  return Object.prototype.toString.call(object).slice(8, -1)
}

function hasEntries(object: object): object is { entries(): Iterable<[unknown, unknown]> } {
  return typeof (object as { entries?: unknown }).entries === 'function'
}

// Whether a Map has a key that String() would write as `[object Object]` (so every such key as
// the same name, each entry overwriting the last).
function hasObjectKey(map: Map<unknown, unknown>): boolean {
  for (const key of map.keys()) {
    if ((typeof key === 'object' && key !== null) || typeof key === 'function') return true
  }
  return false
}

// [name, value] pairs (a Map with keys that are text or numbers, Headers, URLSearchParams) as
// an object: names masked and cut as field names are, a secret name's value redacted, and a
// name that comes again (a repeated query parameter, two keys 1 and '1') written as the list of
// its values rather than the last one alone.
function pairsObject(
  pairs: Iterable<[unknown, unknown]>,
  core: LoggerCore,
  depth: number,
  walk: Walk,
): Record<string, unknown> {
  const out = fieldsObject()
  let lists: Set<string> | undefined
  for (const [k, v] of pairs) {
    if (overBudget(out, walk)) break
    const { secret, shown } = fieldName(String(k), core)
    walk.left -= shown.length + 4
    const value = secret ? REDACTED : sanitize(v, core, depth + 1, walk)
    if (!Object.hasOwn(out, shown)) out[shown] = value
    else if (lists?.has(shown)) (out[shown] as unknown[]).push(value)
    else if (out[shown] !== REDACTED || !secret) {
      out[shown] = [out[shown], value]
      lists ??= new Set()
      lists.add(shown)
    }
  }
  return out
}

// A Map with an object for a key, as the list of its [key, value] pairs (cut as an array is):
// such keys have no name to be written under. A value is redacted when its key is text that
// names a secret, as in the object form.
function entryList(
  map: Map<unknown, unknown>,
  core: LoggerCore,
  depth: number,
  walk: Walk,
): unknown[] {
  const items: unknown[] = []
  for (const [k, v] of map) {
    if (items.length === maxArrayItems) {
      items.push(`[${map.size - maxArrayItems} more]`)
      break
    }
    const secret = typeof k === 'string' && fieldName(k, core).secret
    const key = sanitize(k, core, depth + 2, walk)
    items.push([key, secret ? REDACTED : sanitize(v, core, depth + 2, walk)])
  }
  return items
}

// Marks a Map or object whose entries ran past the line's budget (under the key `…`, which no
// budget-cut entry can have been written as) and tells its loop to stop.
function overBudget(out: Record<string, unknown>, walk: Walk): boolean {
  if (walk.left > 0) return false
  out['…'] = truncated
  return true
}

// Longest string read as a header name in a list: names are short, and a long string (a
// message, an id list's item) is not worth judging.
const maxListedName = 256

// Headers also reach a log as lists: Node's `req.rawHeaders` (`['Host', 'x', 'Cookie', 'sid']`)
// and the [name, value] pairs of `Object.entries(headers)`, a spread Map or WHATWG Headers. A
// secret's value sits beside its name there, not under it: in an array of even length whose
// even items are all strings, the item after a secret name (as a field name is judged) is
// masked. Other arrays are given up on at their first odd length or non-string name, so an
// ordinary array costs a length check or a few typeof tests. An even list of plain names
// (`['token', 'cookie']`) loses its odd items too: hiding too much is the safe side.
function secretValueIndexes(array: readonly unknown[], core: LoggerCore): Set<number> | undefined {
  if (array.length % 2 !== 0 || typeof array[0] !== 'string') return undefined
  let secrets: Set<number> | undefined
  // Only the items that are written are judged (maxArrayItems is even, so pairs stay whole).
  const end = Math.min(array.length, maxArrayItems)
  for (let i = 0; i < end; i += 2) {
    const name = array[i]
    if (typeof name !== 'string') return undefined
    const known = core.keys.get(name)?.secret
    if (known ?? (name.length <= maxListedName && isSecretKey(name, core.extra))) {
      secrets ??= new Set()
      secrets.add(i + 1)
    }
  }
  return secrets
}

// What says where a failure happened, beside its code: Node's system errors (`errno`,
// `syscall`, `address`, `port`, `path`, `dest`) and pg's DatabaseError (`detail`, `hint`,
// `severity`, `schema`, `table`, `column`, `constraint`, `routine`). Written only as text
// (masked as any string is) or numbers: an object under one of these names is not a
// diagnostic anyone relies on, and would only be one more place for a secret to hide.
const diagnosticFields = [
  'errno',
  'syscall',
  'address',
  'port',
  'path',
  'dest',
  'detail',
  'hint',
  'severity',
  'schema',
  'table',
  'column',
  'constraint',
  'routine',
] as const

// Operational failures with a stable code (broker down, timeout, open circuit) are expected
// and logged often: their stack says nothing new, so only unexpected errors carry one.
function serializeError(
  error: Error,
  core: LoggerCore,
  depth: number,
  walk: Walk,
): Record<string, unknown> {
  // name, message and stack are strings unless someone assigned them: anything else goes
  // through sanitize like any value (a bigint would make JSON.stringify throw and lose the
  // whole line; an object would be written unmasked).
  const text = (value: unknown): unknown => sanitize(value, core, depth + 1, walk)
  const out: Record<string, unknown> = {
    type: text(error.name),
    message: text(error.message),
  }
  const extra = error as unknown as Record<string, unknown>
  if (extra.code !== undefined) out.code = sanitize(extra.code, core, depth + 1, walk)
  if (typeof extra.status === 'number') out.status = extra.status
  for (const field of diagnosticFields) {
    const value = extra[field]
    if (typeof value === 'string') out[field] = text(value)
    else if (typeof value === 'number') out[field] = value
  }
  if (!BreakwaterError.is(error) && error.stack !== undefined) {
    out.stack = text(error.stack)
  }
  if (error.cause !== undefined) out.cause = sanitize(error.cause, core, depth + 1, walk)
  if (isAggregateError(error)) {
    out.errors = sanitize((error as AggregateError).errors, core, depth + 1, walk)
  }
  return out
}

// Prototypes looked through for another realm's AggregateError: a real one has two (its own and
// Error's), a subclass one more each; the bound keeps a proxy's endless chain from hanging.
const maxPrototypes = 16

// An AggregateError of this realm or another: that realm's is no instance of this one's, so it
// is known by its constructor's name, as util.inspect knows it.
function isAggregateError(error: object): boolean {
  if (error instanceof AggregateError) return true
  let prototype: unknown = Object.getPrototypeOf(error)
  for (let i = 0; i < maxPrototypes && prototype !== null; i++) {
    const ctor = Object.hasOwn(prototype as object, 'constructor')
      ? (prototype as { constructor?: { name?: unknown } }).constructor
      : undefined
    if (typeof ctor === 'function' && ctor.name === 'AggregateError') return true
    prototype = Object.getPrototypeOf(prototype)
  }
  return false
}

/**
 * Creates a logger that writes one JSON object per line: `level`, `time` (ISO 8601, UTC),
 * `msg`, then the logger's bound fields and the call's fields. A line holds no character a
 * line-oriented reader (Python's `str.splitlines()`, a log shipper) ends a line at: U+0085,
 * U+2028 and U+2029, which JSON allows unescaped, are written `\u0085`, `\u2028`, `\u2029`;
 * and none a strict JSON reader (serde_json, so Vector) refuses: a lone UTF-16 surrogate in a
 * string or field name is written U+FFFD, as a UTF-8 encoder writes it.
 * Secrets never reach the output: values of secret-named fields (password, secret, token, API
 * key, authorization, cookie, and `redactKeys`) at any depth become `[redacted]`, so do the values that follow such a name in a
 * header list (`req.rawHeaders`, the [name, value] pairs of `Object.entries`), and credentials inside any string (URL
 * passwords, `password=` pairs, `x-api-key: ...` header lines, `{ token: '...' }` object text,
 * bearer tokens) are masked, field names and Map keys included. Errors (also those made in
 * another realm, such as a `vm` context, known by `util.types.isNativeError`) become `{ type, message,
 * code, status, stack, cause }` (no stack for breakwater's coded errors), with the diagnostic
 * fields of Node's system errors (`errno`, `syscall`, `address`, `port`, `path`, `dest`) and
 * of pg's (`detail`, `hint`, `severity`, `schema`, `table`, `column`, `constraint`,
 * `routine`) when they hold text or a number. Built-ins whose data is not in own properties
 * keep it: a WHATWG `Headers` or `URLSearchParams` is written as an object of its pairs (a
 * secret-named header's or parameter's value redacted, a repeated name as a list), a `Map` as an
 * object of its entries (as `[key, value]` pairs when a key is an object), a `Set` as an array,
 * a `RegExp` as its text, a `URL` as its `href` with the password masked, a boxed primitive as
 * its value, binary data (a `Buffer`, a typed array, an `ArrayBuffer`) as `[N bytes]`, and
 * another built-in with no own data (an `AbortSignal`, a `Promise`) as its kind, `[AbortSignal]`.
 * Circular and very
 * deep values are cut short, so are strings and field names past 8,192 characters and arrays past 100 items,
 * and one call's fields write about 1 MiB of text at most (a huge Map or a graph of shared
 * references is written `[truncated]` past it), and a value that throws when read (a getter, `toJSON`, a revoked
 * proxy) is written as `[unserializable]`, so logging never throws. Nor does an output whose
 * `write` throws: that line is dropped, and the output's first failure is reported once to
 * `process.stderr` (see {@link LogOutput}).
 *
 * An unknown (misspelt) option is refused with `InvalidOptionError` (`INVALID_OPTION`) naming it.
 *
 * @example
 * ```ts
 * const log = createJsonLogger({ fields: { service: 'relay' } })
 * log.info('connected', { broker: 'nats://app:secret@nats:4222' })
 * // {"level":"info","time":"...","msg":"connected","service":"relay","broker":"nats://app:***@nats:4222"}
 * ```
 */
export function createJsonLogger(options: JsonLoggerOptions = {}): Logger {
  checkObject('logger', options)
  // A misspelt redactKeys left the fields it named unredacted, without a word.
  checkOptionKeys('logger', options, loggerOptions)
  const level = checkOneOf('logger.level', options.level ?? 'info', logThresholds)
  const output = options.output ?? process.stdout
  if (typeof output !== 'object' || output === null || typeof output.write !== 'function')
    throw new InvalidOptionError('logger.output', 'an object with write()', output)
  const clock = checkClock('logger.clock', options.clock)
  const redactKeys = options.redactKeys ?? []
  if (!Array.isArray(redactKeys) || redactKeys.some((k) => typeof k !== 'string' || k === ''))
    throw new InvalidOptionError('logger.redactKeys', 'an array of field names', redactKeys)
  const core: LoggerCore = {
    threshold: rank[level],
    level,
    output,
    clock,
    extra: new Set(redactKeys.map(normalizeKey)),
    keys: new Map(),
  }
  const fields = checkObject('logger.fields', options.fields ?? {})
  return new JsonLogger(core, sanitizeFields(fields, core))
}
