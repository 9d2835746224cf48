// Checks shared by breakwater/cqrs: its option bags (known keys, no null) and the JSON text of
// event data and metadata, which must read back as what was appended.
import { InvalidOptionError } from '../core/errors.js'
import { jsonTextOf } from '../core/text.js'
import { checkOptionKeys as coreCheckOptionKeys } from '../core/validate.js'

/**
 * @internal The core {@link coreCheckOptionKeys} (known keys, no null), naming a null option by
 * its bare key when `prefix` is `'options'` (`maxAttempts`, but `snapshots.every`), as the
 * option's own check names it.
 */
export function checkOptionKeys(prefix: string, options: object, known: ReadonlySet<string>): void {
  coreCheckOptionKeys(prefix, options, known, { bareNames: prefix === 'options' })
}

/** What JSON turns into a `null` the caller did not write, or a throw of the caller's code. */
interface NullLoss {
  readonly what: string
  readonly path: string
  /** The error a toJSON or getter threw, when that is what was found. */
  readonly thrown?: { readonly error: unknown }
}

const dateToJSON = Date.prototype.toJSON
const identifier = /^[A-Za-z_$][\w$]*$/

/**
 * @internal `jsonTextOf` for event data and metadata and stream metadata, also refusing
 * (`InvalidOptionError` naming `option` and the path) what JSON writes as a `null` the caller
 * did not write: an invalid Date (its toJSON gives null) and an undefined array element or hole,
 * as NaN and a function in an array already are. A toJSON or getter that throws is refused the
 * same way, its error the `cause`, instead of escaping as the caller's bare Error. Either way
 * nothing is written: this runs before the append's statement.
 */
export function eventJsonText(
  option: string,
  value: unknown,
  expected = 'a JSON-serializable value',
): string {
  let text: string
  try {
    text = jsonTextOf(option, value, expected)
  } catch (error) {
    if (error instanceof InvalidOptionError) throw error
    const found = nullLossIn(value, '', option, false, [])
    throw refusal(option, value, expected, found?.thrown === undefined ? undefined : found, error)
  }
  // Both losses write a literal null: text without one needs no second walk.
  if (!text.includes('null')) return text
  const found = nullLossIn(value, '', option, false, [])
  if (found !== undefined) throw refusal(option, value, expected, found, found.thrown?.error)
  return text
}

function refusal(
  option: string,
  value: unknown,
  expected: string,
  found: NullLoss | undefined,
  thrown: unknown,
): InvalidOptionError {
  const reason =
    found === undefined
      ? `its JSON form threw: ${String(thrown)}`
      : found.thrown === undefined
        ? `${found.what} at ${found.path} has no JSON form: it would be stored as null`
        : `${found.what} at ${found.path} threw: ${String(thrown)}`
  const error = new InvalidOptionError(option, `${expected} (${reason})`, value)
  if (thrown !== undefined) {
    // As Error's own cause: not enumerable, so a log of the error does not repeat it.
    Object.defineProperty(error, 'cause', {
      value: thrown,
      writable: true,
      configurable: true,
      enumerable: false,
    })
  }
  return error
}

/**
 * The first invalid Date, undefined array element or throwing toJSON or getter in `value`,
 * following JSON.stringify's own walk (toJSON first, then own enumerable keys). A cycle is left
 * to `jsonTextOf`, which refuses it.
 */
function nullLossIn(
  value: unknown,
  key: string,
  path: string,
  inArray: boolean,
  ancestors: object[],
): NullLoss | undefined {
  let v = value
  if ((typeof v === 'object' && v !== null) || typeof v === 'bigint') {
    let toJSON: unknown
    try {
      toJSON = (v as { toJSON?: unknown }).toJSON
      if (toJSON === dateToJSON && v instanceof Date) {
        return Number.isNaN(v.getTime()) ? { what: 'an invalid Date', path } : undefined
      }
      if (typeof toJSON === 'function') v = toJSON.call(v, key)
    } catch (error) {
      return { what: 'the toJSON', path, thrown: { error } }
    }
  }
  if (v === undefined) return inArray ? { what: 'undefined', path } : undefined
  if (typeof v !== 'object' || v === null || ancestors.includes(v)) return undefined
  ancestors.push(v)
  try {
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) {
        const found = fieldLoss(v, i, `${path}[${i}]`, true, ancestors)
        if (found !== undefined) return found
      }
      return undefined
    }
    for (const field of Object.keys(v)) {
      const step = identifier.test(field) ? `.${field}` : `[${JSON.stringify(field)}]`
      const found = fieldLoss(v, field, `${path}${step}`, false, ancestors)
      if (found !== undefined) return found
    }
    return undefined
  } finally {
    ancestors.pop()
  }
}

function fieldLoss(
  holder: object,
  key: string | number,
  path: string,
  inArray: boolean,
  ancestors: object[],
): NullLoss | undefined {
  let field: unknown
  try {
    field = (holder as Record<string | number, unknown>)[key]
  } catch (error) {
    return { what: 'reading the field', path, thrown: { error } }
  }
  return nullLossIn(field, String(key), path, inArray, ancestors)
}
