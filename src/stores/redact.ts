/**
 * Hides the password (and a `password=` query parameter) in a database URL, for messages and
 * logs: `postgres://app:secret@db/app` becomes `postgres://app:***@db/app`.
 */
export function redactUrl(url: string): string {
  return url
    .replace(/^([a-z][a-z0-9+.-]*:\/\/)([^/?#]*)@/i, (_match, scheme: string, userinfo: string) => {
      const colon = userinfo.indexOf(':')
      return `${scheme}${colon === -1 ? userinfo : `${userinfo.slice(0, colon)}:***`}@`
    })
    .replace(/([?&]password=)[^&#]*/gi, '$1***')
}
