/** Where the userinfo (`user:password`) of a `scheme://userinfo@host...` string lies. */
export interface UserinfoSpan {
  /** The index just after `//`, where the user name begins. */
  readonly start: number
  /** The index of the first `:` inside the userinfo, or -1 when it holds a user name alone. */
  readonly colon: number
  /** The index of the `@` that ends the userinfo. */
  readonly at: number
}

const schemePrefix = /^[a-z][a-z0-9+.-]*:\/\//i

/**
 * Finds the userinfo of a URL-like string even when it does not parse: a password that was
 * not percent-encoded may hold `/`, `?`, `#` and `@`, and such a URL is exactly the one shown
 * in an error message. The userinfo ends at the last `@` before the query or fragment, which
 * begins at the first `?` or `#` after the first `@` (before that `@`, a `?` or `#` may belong
 * to the password). Undefined when there is no scheme or no `@`.
 *
 * Shared by the database, broker and log redaction so all three hide the same span.
 */
export function userinfoSpan(url: string): UserinfoSpan | undefined {
  const scheme = schemePrefix.exec(url)
  if (scheme === null) return undefined
  const start = scheme[0].length
  const firstAt = url.indexOf('@', start)
  if (firstAt === -1) return undefined
  const query = url.slice(firstAt).search(/[?#]/)
  const at = url.lastIndexOf('@', query === -1 ? url.length : firstAt + query)
  const colon = url.indexOf(':', start)
  return { start, colon: colon !== -1 && colon < at ? colon : -1, at }
}

/**
 * A URL-like string with everything between its scheme (and any slashes after it) and the last
 * `@` before its query replaced by `***`: where a user name and password sit when no
 * `scheme://userinfo@` was found (written without //, or with an invalid scheme). Unchanged
 * without an `@`. Shared by the database and broker redaction.
 */
export function hideBeforeAt(value: string): string {
  const first = value.indexOf('@')
  if (first === -1) return value
  const query = value.slice(first).search(/[?#]/)
  const at = value.lastIndexOf('@', query === -1 ? value.length : first + query)
  // A scheme and its slashes, or (no valid scheme, such as `%%://`) whatever precedes `//`.
  const scheme = /^(?:[a-z][a-z0-9+.-]*:\/*|[^@]*?\/\/)/i.exec(value)?.[0] ?? ''
  return `${value.slice(0, scheme.length)}***${value.slice(at)}`
}
