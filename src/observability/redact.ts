import { userinfoSpan } from '../core/userinfo.js'

// Secret hiding for logs and messages. Two nets: field names that hold secrets (their values
// are replaced whole), and secrets embedded in free text (URL credentials, `password=` pairs,
// bearer tokens), which are masked wherever a string is logged.

/** What a redacted value is replaced with. */
export const REDACTED = '[redacted]'

// Compared after lower-casing and removing `-`, `_`, `.` and spaces, so `X-Api-Key`,
// `api_key` and `apiKey` are one name. A suffix match catches `dbPassword`, `clientSecret`,
// `accessToken`, `set-cookie`, `proxy-authorization`; names that merely contain a word
// (`tokens`, `secretFile`, `passwordPolicy`) are left alone.
const secretSuffixes = [
  'password',
  'passwd',
  'passphrase',
  'secret',
  'token',
  'apikey',
  'privatekey',
  'credential',
  'credentials',
  'authorization',
  'cookie',
  'sessionid',
]

/** The normalized form of a field name that {@link isSecretKey} compares. */
export function normalizeKey(key: string): string {
  return key.toLowerCase().replace(/[-_.\s]/g, '')
}

/**
 * True when a field of this name holds a secret (password, secret, token, API key, private
 * key, credentials, authorization, cookie, session id, in any case and with `-`/`_` spelling),
 * or when its normalized name is one of `extra`.
 *
 * @example
 * ```ts
 * isSecretKey('X-Api-Key') // true
 * isSecretKey('tokens') // false
 * ```
 */
export function isSecretKey(key: string, extra?: ReadonlySet<string>): boolean {
  const normalized = normalizeKey(key)
  if (extra?.has(normalized)) return true
  for (const suffix of secretSuffixes) if (normalized.endsWith(suffix)) return true
  return false
}

// A URL-like run of text: scheme:// and everything up to whitespace, a quote or an angle
// bracket (none of which a URL holds unencoded). Its userinfo is found by userinfoSpan, as in
// database and broker URLs, so a password holding an unencoded `@`, `/`, `?` or `#` is masked
// whole.
// Every pattern here must run in time linear in the text: redactSecrets sees every logged
// string, request paths in access lines included. An unbounded run of name characters after a
// `\b` is quadratic (each word boundary inside `a.a.a.a...` restarts a scan to the run's end:
// 0.6 s for a 16 KB path), so the scheme is bounded (none is longer than 32 characters).
const urlRuns = /\b[a-z][a-z0-9+.-]{0,31}:\/\/[^\s"'<>`]*/gi
// key=value pairs in query strings, libpq/ODBC connection strings and environment dumps. The
// key is judged as a field name is: one that ends in a secret name (`DB_PASSWORD`, `PGPASSWORD`,
// `client_secret`, `x-api-key`), not one that merely contains it (`max_tokens`). The match
// starts at the secret name (what comes before it in the key is kept as it is anyway), which
// keeps it linear.
const secretPairs =
  /(password|passwd|passphrase|pwd|secret|token|api[_-]?key|private[_-]?key|credentials?|session[_-]?id)=(?:"[^"]*"|'[^']*'|[^\s&#;,]*)/gi
const authSchemes = /\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}/g
// After an Authorization header name, any scheme in any case (schemes are case-insensitive,
// RFC 9110 §11.1: `authorization: bearer ...`, `Token ...`); elsewhere only `Bearer`/`Basic`,
// since "basic" and "bearer" are also plain words.
const authHeaders =
  /\b((?:proxy-)?authorization["']?\s*[:=]\s*["']?)([A-Za-z][\w.+-]*)\s+[A-Za-z0-9._~+/=-]{4,}/gi
// `"name": value` members of JSON held in a string (a request body or config quoted in an error
// message): a string or number value of a secret-named member is masked, the name judged by
// isSecretKey as a field name is.
const jsonMembers = /"((?:[^"\\]|\\.){1,200})"(\s*:\s*)("(?:[^"\\]|\\.)*"|-?\d[\d.eE+-]*)/g
const mayHoldSecret = /bearer|basic|authorization|"\s*:/i

/**
 * Masks secrets embedded in text: URL credentials (`postgres://app:secret@db` becomes
 * `postgres://app:***@db`; a user-only userinfo such as a NATS token becomes `***`),
 * `key=value` pairs whose key ends in a secret name (`password=`, `DB_PASSWORD=`, `token=`,
 * `x-api-key=`, as {@link isSecretKey} judges field names), the values of secret-named members
 * of JSON text (`"password":"..."`), `Bearer`/`Basic` credentials, and the credentials after
 * an `Authorization` header name whatever their scheme and case.
 *
 * @example
 * ```ts
 * redactSecrets('cannot connect to amqp://guest:guest@127.0.0.1:5672')
 * // 'cannot connect to amqp://guest:***@127.0.0.1:5672'
 * ```
 */
export function redactSecrets(text: string): string {
  if (!text.includes('@') && !text.includes('=') && !mayHoldSecret.test(text)) return text
  return text
    .replace(urlRuns, maskUrlCredentials)
    .replace(jsonMembers, (match, key: string, colon: string) =>
      isSecretKey(key) ? `"${key}"${colon}"***"` : match,
    )
    .replace(secretPairs, (_match, name: string) => `${name}=***`)
    .replace(authHeaders, (_match, name: string, scheme: string) => `${name}${scheme} ***`)
    .replace(authSchemes, (_match, scheme: string) => `${scheme} ***`)
}

// user:password@ keeps the user; a user name alone (a NATS or Redis token) is masked whole,
// unless it holds a `/`, `?` or `#`: then the `@` belongs to a path or a query
// (`https://host/users/@me`, `https://host?mail=a@b`).
function maskUrlCredentials(run: string): string {
  const span = userinfoSpan(run)
  if (span === undefined) return run
  if (span.colon !== -1) return `${run.slice(0, span.colon)}:***${run.slice(span.at)}`
  if (/[/?#]/.test(run.slice(span.start, span.at))) return run
  return `${run.slice(0, span.start)}***${run.slice(span.at)}`
}
