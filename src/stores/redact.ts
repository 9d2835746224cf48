import { hasQueryKey, maskQueryValues } from '../core/query-keys.js'
import { hideBeforeAt, userinfoSpan } from '../core/userinfo.js'

// pg-connection-string takes the password, and the key's passphrase (a parameter it does not
// read, which parseDatabaseUrl refuses, quoting the URL), from these query keys. pg compares
// them as written; any case is hidden here, hiding too much being the safe side.
const isPasswordKey = (name: string): boolean => /^(?:ssl)?password$/i.test(name)

/**
 * Hides the password (and a `password=` or `sslpassword=` query parameter) in a database URL, for messages and
 * logs: `postgres://app:secret@db/app` becomes `postgres://app:***@db/app`. A password that was
 * not percent-encoded is hidden too, whatever it holds (`/`, `?`, `#`, `@`): such a URL does not
 * parse, and that is when it is shown in an error message. So is one written without `//`
 * (`postgres:app:secret@db` becomes `postgres:***@db`). A query key is read as pg reads it,
 * percent-decoded (`?pass%77ord=x` sets the password too).
 */
export function redactUrl(url: string): string {
  return maskQueryValues(redactUserinfo(url), isPasswordKey, /[&#]/g)
}

/**
 * Whether a database URL has a `password` or `sslpassword` query parameter, its key read as pg
 * reads it (percent-decoded, raw tabs and line breaks dropped) in any case.
 */
export function hasQueryPassword(url: string): boolean {
  return hasQueryKey(url, isPasswordKey)
}

function redactUserinfo(url: string): string {
  const span = userinfoSpan(url)
  // Written without // (postgres:app:pw@db, a typo that is then refused and quoted), the
  // credentials sit where no userinfo is found. A sqlite: file name may hold an @ of its own.
  if (span === undefined) return /^sqlite:/i.test(url) ? url : hideBeforeAt(url)
  if (span.colon === -1) return url
  return `${url.slice(0, span.colon)}:***${url.slice(span.at)}`
}
