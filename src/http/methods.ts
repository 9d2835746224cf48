// The request methods RFC 9110 §9.2.2 defines as idempotent: repeating one has the effect of
// sending it once, so a failed attempt may be retried without an Idempotency-Key. The HTTP
// client and the proxy's upstream and sidecar sides all decide retries from this one list.

/** Idempotent methods (upper case), per RFC 9110 §9.2.2. */
export const idempotentMethods: ReadonlySet<string> = new Set([
  'GET',
  'HEAD',
  'OPTIONS',
  'TRACE',
  'PUT',
  'DELETE',
])

/**
 * Methods the HTTP client sends no body with (upper case). RFC 9110 §9.3.8 forbids content in a
 * TRACE request; in GET and HEAD (§9.3.1, §9.3.2) content has no defined meaning, servers and
 * intermediaries may drop it or refuse the request, and it is a request-smuggling vector.
 * undici's `request()` sends such a body as given (its `fetch()` refuses all three), so the
 * client refuses it, naming the method, before anything is sent.
 */
export const bodylessMethods: ReadonlySet<string> = new Set(['GET', 'HEAD', 'TRACE'])
