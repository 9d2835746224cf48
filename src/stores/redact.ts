import { userinfoSpan } from '../core/userinfo.js'

/**
 * Hides the password (and a `password=` or `sslpassword=` query parameter) in a database URL, for messages and
 * logs: `postgres://app:secret@db/app` becomes `postgres://app:***@db/app`. A password that was
 * not percent-encoded is hidden too, whatever it holds (`/`, `?`, `#`, `@`): such a URL does not
 * parse, and that is when it is shown in an error message.
 */
export function redactUrl(url: string): string {
  return redactUserinfo(url).replace(/([?&](?:ssl)?password=)[^&#]*/gi, '$1***')
}

function redactUserinfo(url: string): string {
  const span = userinfoSpan(url)
  if (span === undefined || span.colon === -1) return url
  return `${url.slice(0, span.colon)}:***${url.slice(span.at)}`
}
