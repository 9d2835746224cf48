// The headers a gateway adds to what it forwards (X-Forwarded-*), and drops from it (client
// claims of another address, method-override headers). Shared by forwarded requests and
// WebSocket handshakes.

import type { IncomingMessage } from 'node:http'
import type { RouteConfig } from '../contracts.js'
import type { InboundRequest } from './request.js'

// Headers through which a client could claim another address, scheme, host or path; dropped
// unless the listener trusts what is in front of it. Besides Forwarded and X-Real-IP, the
// address headers that widespread client-address helpers read before (or instead of)
// X-Forwarded-For (request-ip, Rails' RemoteIp, Spring, ASP.NET), and the path headers that
// IIS URL Rewrite, Symfony and Laminas take as the request's real path: through those an app
// would serve another path than the one the route table matched. `Client-IP` is the one
// common PHP code reads first, as CGI's HTTP_CLIENT_IP.
const clientClaims = [
  'forwarded',
  'x-real-ip',
  'client-ip',
  'x-client-ip',
  'true-client-ip',
  'cf-connecting-ip',
  'fastly-client-ip',
  'x-cluster-client-ip',
  'x-forwarded',
  'forwarded-for',
  'x-original-url',
  'x-rewrite-url',
] as const
// Headers through which frameworks (Express method-override, Rails, Spring's filter, ...) let a
// request stand for another method: on a route chosen by method they would undo the choice, and
// on a shadowed or guarded route the app would run another method than the one judged there.
const methodOverrides = ['x-http-method-override', 'x-http-method', 'x-method-override'] as const
// httpoxy (CVE-2016-5385): CGI turns `Proxy` into HTTP_PROXY, the variable PHP, Python and Go
// HTTP clients in a CGI app take as their outbound proxy. Dropped on trusted listeners too: no
// load balancer sets it, so it can only be the client's, passed through.
const PROXY_HEADER = 'proxy'
// The hyphenated names of every header this module sets or drops. WSGI, CGI and the servers
// that follow them (PHP, Rack) name a header's variable by reading `-` as `_`, so a client's
// `X_Forwarded_For` reaches the app as HTTP_X_FORWARDED_FOR, the variable the real header
// fills; nginx drops underscore headers by default for this reason.
const forwardingNames = new Set<string>([
  ...clientClaims,
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
])
const overrideNames = new Set<string>(methodOverrides)

// Whether `name` (lower case, with at least one `_`) is a spelling of a header that is set or
// dropped here once `_` is read as `-`: any X-Forwarded-*, a client claim, and a method
// override on a route chosen by method.
function isUnderscoreSpelling(name: string, methodRoute: boolean): boolean {
  const folded = name.replaceAll('_', '-')
  return (
    (folded.length > 12 && folded.startsWith('x-forwarded-')) ||
    forwardingNames.has(folded) ||
    (methodRoute && overrideNames.has(folded))
  )
}

/**
 * Whether a route's method-override headers are dropped: when anything on the route judges the
 * request's method, so that the app runs that method. A route that matches on `methods` admits
 * by it; `shadow` sends only its `methods` (GET, HEAD, OPTIONS by default) to the shadow and
 * repeats a safe one to the primary to learn noise; `idempotency` guards only its `methods`.
 * A GET with `X-HTTP-Method-Override: DELETE` would otherwise delete twice on the primary and
 * once on the shadow, or delete unguarded.
 */
export function dropsMethodOverrides(route: RouteConfig): boolean {
  return (
    route.match.methods !== undefined ||
    route.shadow !== undefined ||
    route.idempotency !== undefined
  )
}

/**
 * The inbound headers with `X-Forwarded-For` (the client address appended), `X-Forwarded-Proto`
 * and `X-Forwarded-Host` for the service. Untrusted (the default): the client's own copies of
 * those, of `Forwarded` and of `X-Real-IP` are discarded and the three are set from the
 * connection and the validated `Host`, so an app that reads them can believe them; any other
 * `X-Forwarded-*` the client sent (`-Port`, `-Prefix`, ...) is dropped as well, and so are the
 * other client-address headers (`Client-IP`, `X-Client-IP`, `True-Client-IP`,
 * `CF-Connecting-IP`, ...) and the path overrides `X-Original-URL` and `X-Rewrite-URL`. Trusted
 * (a listener behind a load balancer that sets them): the address is appended to the chain, and
 * Proto / Host are set only when absent. `Proxy` (httpoxy) is dropped in both modes. With
 * `methodRoute` (see {@link dropsMethodOverrides}) method-override headers are dropped, so the
 * app runs the method the route judged. In both modes a header
 * whose name is one of those once `_` is read as `-` (`X_Forwarded_For`, `X-Real_IP`,
 * `X_Original_URL`, any `X_Forwarded_*`) is dropped: WSGI and CGI apps read it as the real one.
 */
export function forwardedHeaders(
  inbound: InboundRequest,
  req: IncomingMessage,
  scheme: string,
  trusted: boolean,
  methodRoute: boolean,
): Record<string, string | string[]> {
  const headers = { ...inbound.headers }
  const client = req.socket.remoteAddress ?? ''
  const chain = trusted ? headers['x-forwarded-for'] : undefined
  const previous = chain === undefined ? '' : typeof chain === 'string' ? chain : chain.join(', ')
  headers['x-forwarded-for'] = previous.trim() === '' ? client : `${previous}, ${client}`
  if (!trusted || headers['x-forwarded-proto'] === undefined) headers['x-forwarded-proto'] = scheme
  if (!trusted || headers['x-forwarded-host'] === undefined)
    headers['x-forwarded-host'] = inbound.host
  if (!trusted) {
    for (const name of clientClaims) delete headers[name]
    // Every other X-Forwarded-* a client sent (-Port, -Prefix, -Ssl, -Server, ...) is a claim
    // too: frameworks build redirects and absolute links from them. The docs promise that an
    // untrusted listener keeps none of the client's X-Forwarded-*, not only the three set above.
    for (const name in headers) {
      if (
        name.length > 12 &&
        name.startsWith('x-forwarded-') &&
        name !== 'x-forwarded-for' &&
        name !== 'x-forwarded-proto' &&
        name !== 'x-forwarded-host'
      )
        delete headers[name]
    }
  }
  delete headers[PROXY_HEADER]
  if (methodRoute) for (const name of methodOverrides) delete headers[name]
  // Underscore spellings are dropped on trusted listeners too: no proxy in front sets them, so
  // they can only come from a client, and a front proxy may pass them through.
  for (const name in headers) {
    if (name.includes('_') && isUnderscoreSpelling(name, methodRoute)) delete headers[name]
  }
  // Only the headers are new: a copy of the inbound request would read (and so create) its
  // lazy signal.
  return headers
}
