/**
 * Hides the password (and a `password=` query parameter) in a database URL, for messages and
 * logs: `postgres://app:secret@db/app` becomes `postgres://app:***@db/app`. A password that was
 * not percent-encoded is hidden too, whatever it holds (`/`, `?`, `#`, `@`): such a URL does not
 * parse, and that is when it is shown in an error message.
 */
export function redactUrl(url: string): string {
  return redactUserinfo(url).replace(/([?&]password=)[^&#]*/gi, '$1***')
}

function redactUserinfo(url: string): string {
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(url)
  if (scheme === null) return url
  const start = scheme[0].length
  const firstAt = url.indexOf('@', start)
  if (firstAt === -1) return url
  // The userinfo ends at the last @ before the query or fragment, which begins at the first ? or
  // # after the first @ (before that @, a ? or # may be part of the password, as may / and @).
  const query = url.slice(firstAt).search(/[?#]/)
  const at = url.lastIndexOf('@', query === -1 ? url.length : firstAt + query)
  const colon = url.indexOf(':', start)
  if (colon === -1 || colon > at) return url
  return `${url.slice(0, colon)}:***${url.slice(at)}`
}
