import { InvalidOptionError } from '../core/errors.js'
import { isHttpToken } from './header-name.js'

/** The methods guarded when the option is left out. */
export const defaultMethods: readonly string[] = ['POST', 'PATCH']

/**
 * Checks the `methods` option and returns its methods in upper case (requests are matched
 * case-insensitively). A method no request can carry (`' POST'`, `'PO ST'`, `'POST,PATCH'`)
 * guarded nothing, and an empty list guarded nothing at all: every request then ran without
 * idempotency, silently. Each is refused, naming the entry (`methods[0]`).
 */
export function checkMethods(value: unknown): ReadonlySet<string> {
  if (!Array.isArray(value)) {
    throw new InvalidOptionError('methods', 'an array of HTTP method names', value)
  }
  if (value.length === 0) {
    throw new InvalidOptionError(
      'methods',
      'at least one HTTP method name (to turn idempotency off, do not install it)',
      value,
    )
  }
  const methods = new Set<string>()
  value.forEach((method: unknown, i) => {
    const option = `methods[${i}]`
    if (typeof method !== 'string') {
      throw new InvalidOptionError(option, 'an HTTP method name', method)
    }
    if (!isHttpToken(method)) {
      // A comma-separated list is a natural slip (it is how an Allow header reads): say so.
      const listed = method.includes(',') && method.split(',').every((m) => isHttpToken(m.trim()))
      throw new InvalidOptionError(
        option,
        listed
          ? "one method per entry (list the methods separately, as ['POST', 'PATCH'])"
          : 'an HTTP method name of HTTP token characters (RFC 9110 section 9.1), without spaces',
        method,
      )
    }
    const upper = method.toUpperCase()
    if (upper === 'HEAD') {
      throw new InvalidOptionError(
        option,
        'an HTTP method name other than HEAD (a HEAD response has no body to record; it is safe, so leave it unguarded)',
        method,
      )
    }
    methods.add(upper)
  })
  return methods
}
