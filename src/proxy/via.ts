// The Via header (RFC 9110 §7.6.3): a proxy adds itself to the Via of every message it forwards,
// in both directions, after the entries already there, so the apps behind and the clients in
// front can see the chain of intermediaries (and debug it). Via is end-to-end, not hop-by-hop:
// the entries of earlier hops are kept, in order. The inbound side adds the request's entry
// (it knows the client's protocol version); the upstream side adds the response's, as it does
// the hop-by-hop filtering of both (src/proxy/hop-by-hop.ts).

/** The pseudonym the proxy names itself by in Via unless the config sets another. */
export const DEFAULT_VIA_PSEUDONYM = 'breakwater'

/**
 * A Via pseudonym: an HTTP token (RFC 9110 §7.6.3 `pseudonym = token`) of at most 64
 * characters. No host names with a port (`:` is not a token character): a pseudonym needs no
 * port, and one that is not a real host name does not disclose the proxy's address.
 */
export const viaPseudonymPattern = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$/

/**
 * The Via value with `<protocol> <pseudonym>` appended to `existing` (one value or the values
 * of repeated Via lines, joined with `, ` as RFC 9110 §5.3 allows). `protocol` is the version
 * of the message as the proxy received it (`1.1`, `1.0`).
 *
 * @example
 * ```ts
 * appendVia('1.0 fred', '1.1', 'breakwater') // '1.0 fred, 1.1 breakwater'
 * ```
 */
export function appendVia(
  existing: string | readonly string[] | undefined,
  protocol: string,
  pseudonym: string,
): string {
  const entry = `${protocol} ${pseudonym}`
  if (existing === undefined) return entry
  // Blank values (an empty Via line) add no entry: `, 1.1 breakwater` would start with one.
  const before = (typeof existing === 'string' ? [existing] : existing)
    .map((value) => value.trim())
    .filter((value) => value !== '')
  return before.length === 0 ? entry : `${before.join(', ')}, ${entry}`
}
