// Which header names the idempotency capability accepts: in its options (`replayHeaders`,
// `scope.tenantHeader`) and in what it replays from storage. A method is the same token.

// An HTTP field name is a token (RFC 9110 section 5.1). A name outside it can never match a
// request's or a response's header, so an option naming one is a mistake to report, not a no-op
// to keep; and a stored one cannot be sent (node's writeHead and fetch's Headers throw).
const headerToken = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/

/** True when `name` is an HTTP token, as every header name must be (RFC 9110 section 5.6.2). */
export function isHeaderName(name: string): boolean {
  return headerToken.test(name)
}

/** True when `value` is an HTTP token, as a method must be too (RFC 9110 section 9.1). */
export const isHttpToken: (value: string) => boolean = isHeaderName

/** What an option that names a header expects, for `InvalidOptionError`. */
export const headerNameExpected =
  'a header name made of HTTP token characters (RFC 9110 section 5.6.2)'

/**
 * Headers (lower case) that describe the connection or the framing of one response rather than
 * its content (RFC 9110 section 7.6.1, RFC 9112 sections 6 and 9.6): replayed, `connection:
 * close` would close the client's keep-alive connection on every replay, `transfer-encoding`
 * would frame the recorded fixed-length body, and HTTP/2 refuses them outright. Content-Length is
 * recomputed from the recorded body by every adapter, so recording it would do nothing.
 */
export const unreplayableHeaders: ReadonlySet<string> = new Set([
  'connection',
  'content-length',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
])

// A field value as node's writeHead and fetch's Headers accept it: no control characters but
// tab, nothing above U+00FF (a header value travels as Latin-1 bytes). CR or LF in a stored
// value would also split the response.
const invalidValueChar = /[^\t\x20-\x7e\x80-\xff]/

function isSendableValue(value: string): boolean {
  return !invalidValueChar.test(value)
}

/**
 * The headers of a stored result that a replay may send, each as stored. Records written before
 * `replayHeaders` was checked (or by another tool) may hold a hop-by-hop or framing header,
 * which would describe the original response's connection rather than the replay's (a stored
 * `connection: close` would close the client's connection on every replay), or a name or value
 * that no response can carry (node's writeHead throws, so every replay of the key would fail
 * with a 500 until its retention ends). Those are left out, and only those: for a repeated
 * header, only the values that cannot be sent.
 */
export function replayableHeaders(
  stored: Readonly<Record<string, string | readonly string[]>>,
): Record<string, string | readonly string[]> {
  const headers: Record<string, string | readonly string[]> = {}
  for (const name of Object.keys(stored)) {
    if (!isHeaderName(name) || unreplayableHeaders.has(name.toLowerCase())) continue
    const value = stored[name]
    if (typeof value === 'string') {
      if (isSendableValue(value)) headers[name] = value
    } else if (Array.isArray(value)) {
      const sendable = value.filter((item) => typeof item === 'string' && isSendableValue(item))
      if (sendable.length > 0) headers[name] = sendable.length === value.length ? value : sendable
    }
  }
  return headers
}
