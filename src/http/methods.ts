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
