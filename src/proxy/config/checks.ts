// Cross-field rules of the proxy config, which a per-field schema cannot state: route targets
// and shadow services name defined services, listener names and ports are unique, a split has
// a target with weight > 0, exactly one discovery source, and so on. They run on the raw
// document next to the schema (not after it), so one run reports every problem; each check
// looks only at the parts that have the right shape and leaves the rest to the schema.

import { isIP, isIPv6 } from 'node:net'
import { InvalidOptionError } from '../../core/errors.js'
import { isObjectRecord as isObj } from '../../core/validate.js'
import { DEADLINE_HEADER } from '../../policies/deadline.js'
import { type DatabaseTarget, parseDatabaseUrl } from '../../stores/open.js'
import { hasQueryPassword } from '../../stores/redact.js'
import { HOP_BY_HOP_HEADERS } from '../hop-by-hop.js'
import { matchesPrefix, trimPrefix } from '../inbound/routes.js'
import { echo } from './errors.js'
import { limitsDefaults as limitDefaults, nameText } from './schema.js'

/** A problem found by a cross-field check: where, what was expected, and what was there. */
export interface RawProblem {
  readonly path: readonly (string | number)[]
  readonly expected: string
  /** The value found at `path` (undefined when missing). */
  readonly value: unknown
}

type Obj = Record<string, unknown>

function list(value: unknown): unknown[] {
  return Array.isArray(value) ? value : []
}

/** Every cross-field problem of a raw (parsed YAML) document. */
export function crossFieldProblems(doc: unknown): RawProblem[] {
  const problems: RawProblem[] = []
  if (!isObj(doc)) return problems
  const add = (path: (string | number)[], expected: string, value: unknown): void => {
    problems.push({ path, expected, value })
  }
  const services = isObj(doc.services) ? doc.services : {}
  const serviceNames = Object.keys(services)
  const known = `a service defined under services (${serviceNames.map((n) => echo(n)).join(', ') || 'none defined'})`
  // zod's records skip a `__proto__` key without a word (assigning it would replace the
  // prototype of the object they build): the service would vanish from the config.
  if (Object.hasOwn(services, '__proto__'))
    add(['services', '__proto__'], `a key that is a ${nameText}`, '__proto__')

  for (const [name, service] of Object.entries(services)) {
    if (!isObj(service)) continue
    const base = ['services', name]
    const discovery = isObj(service.discovery) ? service.discovery : undefined
    const sources =
      (service.endpoints !== undefined ? 1 : 0) +
      (discovery?.dns !== undefined ? 1 : 0) +
      (discovery?.file !== undefined ? 1 : 0)
    if (sources !== 1)
      add(
        base,
        'exactly one of endpoints, discovery.dns or discovery.file',
        sources === 0 ? 'none' : `${sources} of them`,
      )
    const dns = isObj(discovery?.dns) ? discovery.dns : undefined
    if (dns !== undefined && dns.recordType !== 'SRV' && dns.port === undefined)
      add([...base, 'discovery', 'dns', 'port'], 'a port for A/AAAA records', undefined)
    // Each SRV record gives its target's port (discovery.ts): one written here was never used.
    if (dns !== undefined && dns.recordType === 'SRV' && dns.port !== undefined)
      add(
        [...base, 'discovery', 'dns', 'port'],
        "no port with recordType SRV (each SRV record gives its target's port)",
        dns.port,
      )
    if (
      dns !== undefined &&
      typeof dns.minRefreshMs === 'number' &&
      typeof dns.maxRefreshMs === 'number' &&
      dns.minRefreshMs > dns.maxRefreshMs
    )
      add(
        [...base, 'discovery', 'dns', 'minRefreshMs'],
        `at most maxRefreshMs (${dns.maxRefreshMs})`,
        dns.minRefreshMs,
      )
    const retry = isObj(service.retry) ? service.retry : undefined
    if (
      retry !== undefined &&
      typeof retry.baseDelayMs === 'number' &&
      typeof retry.maxDelayMs === 'number' &&
      retry.maxDelayMs < retry.baseDelayMs
    )
      add(
        [...base, 'retry', 'maxDelayMs'],
        `at least baseDelayMs (${retry.baseDelayMs})`,
        retry.maxDelayMs,
      )
    const outlier = isObj(service.outlierEjection) ? service.outlierEjection : undefined
    const baseEjectionMs = outlier?.baseEjectionMs ?? 30_000
    if (
      outlier !== undefined &&
      typeof baseEjectionMs === 'number' &&
      typeof outlier.maxEjectionMs === 'number' &&
      outlier.maxEjectionMs >= 1 &&
      outlier.maxEjectionMs < baseEjectionMs
    )
      add(
        [...base, 'outlierEjection', 'maxEjectionMs'],
        `at least baseEjectionMs (${baseEjectionMs})`,
        outlier.maxEjectionMs,
      )
    const tls = isObj(service.tls) ? service.tls : undefined
    if (tls !== undefined && (tls.certFile === undefined) !== (tls.keyFile === undefined))
      add(
        [...base, 'tls', tls.certFile === undefined ? 'certFile' : 'keyFile'],
        'certFile and keyFile together (mTLS client certificate)',
        undefined,
      )
    const auth = isObj(service.auth) ? service.auth : undefined
    if (auth !== undefined && (auth.bearer === undefined) === (auth.apiKey === undefined))
      add([...base, 'auth'], 'exactly one of bearer or apiKey', 'both or neither')
    const apiKey = isObj(auth?.apiKey) ? auth.apiKey : undefined
    if (apiKey !== undefined && (apiKey.env === undefined) === (apiKey.file === undefined))
      add(
        [...base, 'auth', 'apiKey'],
        'exactly one of env or file (the key is never written inline)',
        'both or neither',
      )
    if (typeof apiKey?.header === 'string' && setByProxy(apiKey.header, doc.deadlineHeader))
      add(
        [...base, 'auth', 'apiKey', 'header'],
        'a header the proxy does not set itself (not Host, Content-Length, Expect, X-Request-Id, Idempotency-Key, the deadline header or a hop-by-hop header such as Connection)',
        apiKey.header,
      )
  }

  const listeners = list(doc.listeners)
  const listenerNames = new Map<string, number>()
  // Who took each port, on which address.
  const ports = new Map<
    number,
    { host: string; wildcard: boolean; named: boolean; path: string }[]
  >()
  const routeNames = new Map<string, string>()
  const claimPort = (path: (string | number)[], host: unknown, port: unknown): void => {
    if (typeof port !== 'number' || port === 0) return
    const address = canonicalHost(typeof host === 'string' ? host : '127.0.0.1')
    // A wildcard address takes the port on every address, so it clashes with any other use,
    // whichever of the two is written first.
    const wildcard = address === '0.0.0.0' || address === '::'
    // A host name may resolve to any address (localhost to 127.0.0.1 or ::1) when the proxy
    // binds: the loader cannot tell it from another address, so it shares a port with none.
    const named = !isIP(address)
    const claims = ports.get(port) ?? []
    const owner = claims.find(
      (c) => c.host === address || c.wildcard || wildcard || c.named || named,
    )
    if (owner !== undefined) {
      add(
        path,
        `a port not already used by ${owner.path}${
          owner.host !== address && (owner.named || named)
            ? ' (a host name may resolve to the other address: write IP addresses to share a port)'
            : ''
        }`,
        port,
      )
      return
    }
    claims.push({ host: address, wildcard, named, path: formatPath(path) })
    ports.set(port, claims)
  }
  // Headers the inbound side removes before a route looks at the request (request.ts): a
  // route that matches on one, or takes its sticky or retry-affinity value from one, would
  // never see it, and so never match, or never stick, without a word.
  const deadlineHeader =
    typeof doc.deadlineHeader === 'string' ? doc.deadlineHeader.toLowerCase() : DEADLINE_HEADER
  const unseen = (name: unknown): boolean => {
    if (typeof name !== 'string') return false
    const lower = name.toLowerCase()
    return (
      HOP_BY_HOP_HEADERS.has(lower) ||
      lower === 'host' ||
      lower === 'expect' ||
      lower === deadlineHeader
    )
  }
  const unseenText =
    'a header that reaches the route (Host, Expect, the deadline header and hop-by-hop headers such as Connection or TE are removed before routing)'
  let routeIdempotency = false
  listeners.forEach((listener, i) => {
    if (!isObj(listener)) return
    const base: (string | number)[] = ['listeners', i]
    if (typeof listener.name === 'string') {
      const first = listenerNames.get(listener.name)
      if (first !== undefined)
        add([...base, 'name'], `a name not used by listeners[${first}]`, listener.name)
      else listenerNames.set(listener.name, i)
    }
    claimPort([...base, 'port'], listener.host ?? '127.0.0.1', listener.port)
    // node:http refuses a headers timeout longer than the request timeout when the server is
    // made, so the file would pass the loader and then fail to start (or to reload).
    const limits = isObj(listener.limits) ? listener.limits : {}
    const headersMs = limits.headersTimeoutMs ?? limitDefaults.headersTimeoutMs
    const requestMs = limits.requestTimeoutMs ?? limitDefaults.requestTimeoutMs
    if (typeof headersMs === 'number' && typeof requestMs === 'number' && headersMs > requestMs) {
      if (limits.headersTimeoutMs !== undefined)
        add(
          [...base, 'limits', 'headersTimeoutMs'],
          `at most requestTimeoutMs (${requestMs})`,
          headersMs,
        )
      else
        add(
          [...base, 'limits', 'requestTimeoutMs'],
          `at least headersTimeoutMs (${headersMs}, the default)`,
          requestMs,
        )
    }
    const routes = list(listener.routes)
    if (listener.role === 'ambassador') {
      if (listener.routes !== undefined)
        add([...base, 'routes'], 'no routes on an ambassador (routes belong to gateways)', 'routes')
      if (listener.trustForwardedHeaders !== undefined)
        add(
          [...base, 'trustForwardedHeaders'],
          'no trustForwardedHeaders on an ambassador (only gateways add X-Forwarded-*)',
          'trustForwardedHeaders',
        )
      list(listener.services).forEach((name, j) => {
        if (typeof name === 'string' && !serviceNames.includes(name))
          add([...base, 'services', j], known, name)
      })
    } else if (listener.role === 'gateway') {
      if (listener.services !== undefined)
        add(
          [...base, 'services'],
          'no services list on a gateway (gateways route by routes)',
          'services',
        )
      if (routes.length === 0) add([...base, 'routes'], 'at least one route', listener.routes)
    }
    // Routes are tried in the order written (first match wins): one whose every request an
    // earlier route of the listener takes (a catch-all `/` written first, all methods before
    // POST only) is never reached, and its traffic goes to the earlier route's targets.
    const earlier: { match: RouteMatch; path: string; name: unknown }[] = []
    routes.forEach((route, j) => {
      if (!isObj(route)) return
      const at: (string | number)[] = [...base, 'routes', j]
      const shape = routeMatchOf(route.match)
      if (shape !== undefined) {
        const first = earlier.find((e) => covers(e.match, shape))
        if (first !== undefined)
          add(
            [...at, 'match'],
            `a match that ${first.path}${typeof first.name === 'string' ? ` (${echo(first.name)})` : ''} does not always take first (routes are tried in order; write the narrower route first)`,
            'a route no request reaches',
          )
        earlier.push({ match: shape, path: formatPath(at), name: route.name })
      }
      if (typeof route.name === 'string') {
        const first = routeNames.get(route.name)
        if (first !== undefined)
          add([...at, 'name'], `a route name not used by ${first}`, route.name)
        else routeNames.set(route.name, formatPath(at))
      }
      const targets = list(route.targets)
      let positive = false
      // A service listed twice has no one weight: the route table refuses it at start.
      const listed = new Map<string, number>()
      targets.forEach((target, k) => {
        if (!isObj(target)) return
        if (typeof target.service === 'string' && !serviceNames.includes(target.service))
          add([...at, 'targets', k, 'service'], known, target.service)
        if (typeof target.service === 'string') {
          const first = listed.get(target.service)
          if (first !== undefined)
            add(
              [...at, 'targets', k, 'service'],
              `a service not already listed in targets[${first}]`,
              target.service,
            )
          else listed.set(target.service, k)
        }
        // Only a weight of 0 counts against the route here: any other value that is not a
        // positive number is reported at its own key, and reading it as 0 added a second,
        // wrong problem ("all weights 0" for a weight of -5 or "50").
        if (target.weight !== 0) positive = true
      })
      if (targets.length > 0 && !positive)
        add([...at, 'targets'], 'at least one target with weight > 0', 'all weights 0')
      const shadow = isObj(route.shadow) ? route.shadow : undefined
      if (
        shadow !== undefined &&
        typeof shadow.service === 'string' &&
        !serviceNames.includes(shadow.service)
      )
        add([...at, 'shadow', 'service'], known, shadow.service)
      const sticky = isObj(route.sticky) ? route.sticky : undefined
      if (sticky !== undefined && (sticky.header === undefined) === (sticky.cookie === undefined))
        add([...at, 'sticky'], 'exactly one of header or cookie', 'both or neither')
      if (unseen(sticky?.header)) add([...at, 'sticky', 'header'], unseenText, sticky?.header)
      const affinity = isObj(route.retryAffinity) ? route.retryAffinity : undefined
      if (unseen(affinity?.header))
        add([...at, 'retryAffinity', 'header'], unseenText, affinity?.header)
      const match = isObj(route.match) ? route.match : undefined
      if (isObj(match?.headers)) {
        // Header names are case-insensitive: two spellings of one name are one header with two
        // required values, and the loader would keep only one of them without a word.
        const spelled = new Map<string, string>()
        for (const name of Object.keys(match.headers)) {
          // Skipped by zod's record as a service `__proto__` is: the route would match without it.
          if (name === '__proto__')
            add([...at, 'match', 'headers', name], 'a header name other than __proto__', name)
          if (unseen(name)) add([...at, 'match', 'headers', name], unseenText, name)
          const first = spelled.get(name.toLowerCase())
          if (first !== undefined)
            add(
              [...at, 'match', 'headers', name],
              `a header not already listed (as ${echo(first)}; names are case-insensitive)`,
              name,
            )
          else spelled.set(name.toLowerCase(), name)
        }
      }
      if (
        typeof route.stripPrefix === 'string' &&
        typeof match?.prefix === 'string' &&
        !isPathPrefixOf(route.stripPrefix, match.prefix)
      )
        add(
          [...at, 'stripPrefix'],
          `a prefix of match.prefix (${echo(match.prefix)}) at a segment boundary`,
          route.stripPrefix,
        )
      if (
        route.websocket !== undefined &&
        route.websocket !== false &&
        Array.isArray(match?.methods) &&
        !match.methods.includes('GET')
      )
        add(
          [...at, 'websocket'],
          'a route whose match.methods include GET (a WebSocket handshake is a GET)',
          route.websocket,
        )
      if (route.idempotency !== undefined) routeIdempotency = true
    })
  })

  // `websocket` on a service is the ambassador's setting (gateway routes have their own): on
  // a service no ambassador exposes it would be silently off.
  const ambassadors = list(doc.listeners).filter(
    (listener): listener is Obj => isObj(listener) && listener.role === 'ambassador',
  )
  for (const [name, service] of Object.entries(services)) {
    if (!isObj(service) || service.websocket === undefined || service.websocket === false) continue
    const exposed = ambassadors.some(
      (listener) => !Array.isArray(listener.services) || listener.services.includes(name),
    )
    if (!exposed)
      add(
        ['services', name, 'websocket'],
        'an ambassador listener that exposes this service (websocket on a service is for the ambassador; gateway routes set their own)',
        service.websocket,
      )
  }

  const admin = isObj(doc.admin) ? doc.admin : undefined
  if (admin !== undefined) claimPort(['admin', 'port'], admin.host ?? '127.0.0.1', admin.port)

  const workers = typeof doc.workers === 'number' ? doc.workers : 1
  const store = isObj(doc.idempotency) ? doc.idempotency.url : undefined
  // The store opens the URL only at start (openProxyIdempotency): one it refuses is refused
  // here, so that `--check` finds it, and what it names decides whether workers share it.
  // An empty URL is the schema's to report. Whether a sqlite: path can hold the file is a fact
  // of the machine, which `--check` looks at (files.ts, unusableFiles).
  const url = typeof store === 'string' && store !== '' ? storeUrl(store) : undefined
  const perProcess =
    store === undefined ||
    url?.target === 'memory' ||
    (url?.target?.dialect === 'sqlite' && url.target.filename === ':memory:')
  if (routeIdempotency && workers > 1 && perProcess)
    add(
      ['idempotency', 'url'],
      'a shared store (sqlite:<path> or postgres://...) when workers > 1 and a route enforces Idempotency-Key',
      store,
    )
  // node-postgres also takes `password` (and the key's `sslpassword`) from the query string,
  // under a percent-encoded key too (`pass%77ord`).
  if (
    typeof store === 'string' &&
    (/^postgres(ql)?:\/\/[^/@]*:[^/@]*@/i.test(store) ||
      (/^postgres(ql)?:\/\//i.test(store) && hasQueryPassword(store)))
  )
    add(
      ['idempotency', 'url'],
      'a URL without a password (secrets are never written inline: set PGPASSWORD or use ~/.pgpass)',
      store,
    )
  if (url?.refused !== undefined) add(['idempotency', 'url'], url.refused, store)
  return problems
}

/** What the idempotency store makes of `url`: what it opens, or why it refuses it. */
function storeUrl(url: string): { target?: DatabaseTarget | 'memory'; refused?: string } {
  if (url === 'memory') return { target: 'memory' }
  try {
    return { target: parseDatabaseUrl(url) }
  } catch (error) {
    if (!(error instanceof InvalidOptionError)) throw error
    // A URL of neither scheme is told the three forms the proxy takes (the store's own
    // wording leaves out `memory`); one of them, what is wrong with it.
    return {
      refused: /^(sqlite:.|postgres(ql)?:\/\/.)/i.test(url)
        ? error.expected
        : '"memory", "sqlite:<path>" or "postgres://..."',
    }
  }
}

/**
 * Whether the proxy sets or frames `name` on an upstream request itself, so that an API key
 * sent under it would clash: a second Host or X-Request-Id, a Content-Length or Connection the
 * pool refuses or drops, the deadline or Idempotency-Key replaced by the secret. Each broke
 * every request of the service while the file was accepted.
 */
function setByProxy(name: string, deadlineHeader: unknown): boolean {
  const lower = name.toLowerCase()
  const deadline =
    typeof deadlineHeader === 'string' ? deadlineHeader.toLowerCase() : DEADLINE_HEADER
  return (
    HOP_BY_HOP_HEADERS.has(lower) ||
    lower === 'host' ||
    lower === 'content-length' ||
    lower === 'expect' ||
    lower === 'x-request-id' ||
    lower === 'idempotency-key' ||
    lower === deadline
  )
}

/** What a route matches on, in the form the route table compares (routes.ts). */
interface RouteMatch {
  readonly prefix: string
  readonly caseSensitive: boolean
  readonly methods: ReadonlySet<string> | undefined
  readonly headers: ReadonlyMap<string, unknown>
}

/** A route's `match` as a {@link RouteMatch}, or undefined when it is not well formed. */
function routeMatchOf(match: unknown): RouteMatch | undefined {
  if (match !== undefined && !isObj(match)) return undefined
  const prefix = match?.prefix ?? '/'
  if (typeof prefix !== 'string' || !prefix.startsWith('/')) return undefined
  const methods = match?.methods
  if (methods !== undefined && (!Array.isArray(methods) || methods.length === 0)) return undefined
  if (match?.headers !== undefined && !isObj(match.headers)) return undefined
  const caseSensitive = match?.caseSensitive ?? true
  if (typeof caseSensitive !== 'boolean') return undefined
  const headers = new Map<string, unknown>()
  for (const [name, value] of Object.entries(match?.headers ?? {}))
    headers.set(name.toLowerCase(), value)
  return {
    prefix: trimPrefix(prefix),
    caseSensitive,
    methods: methods === undefined ? undefined : new Set(methods.map(String)),
    headers,
  }
}

/** Whether every request `later` matches is matched by `first` too. */
function covers(first: RouteMatch, later: RouteMatch): boolean {
  // A case-sensitive route takes the one spelling of its prefix: a later case-insensitive
  // route still gets the others (`/PAY` after `/pay`).
  if (first.caseSensitive && !later.caseSensitive) return false
  if (!matchesPrefix(later.prefix, first.prefix, first.caseSensitive)) return false
  if (first.methods !== undefined) {
    if (later.methods === undefined) return false
    for (const m of later.methods) if (!first.methods.has(m)) return false
  }
  for (const [name, value] of first.headers)
    if (!later.headers.has(name) || later.headers.get(name) !== value) return false
  return true
}

function isPathPrefixOf(prefix: string, path: string): boolean {
  if (prefix === '/') return true
  const p = prefix.endsWith('/') ? prefix.slice(0, -1) : prefix
  return path === p || path.startsWith(`${p}/`)
}

/**
 * One spelling per address, so that two spellings of one IPv6 address (`::1` and
 * `0:0:0:0:0:0:0:1`, `::` and `::0`) are seen to claim the same port. Other hosts as written.
 */
function canonicalHost(host: string): string {
  if (!isIPv6(host)) return host
  let canonical: string
  try {
    canonical = new URL(`http://[${host}]/`).hostname.slice(1, -1)
  } catch {
    return host
  }
  // An IPv4-mapped address (`::ffff:127.0.0.1`, which URL writes `::ffff:7f00:1`) binds the
  // IPv4 address itself.
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(canonical)
  if (mapped === null) return canonical
  const high = Number.parseInt(mapped[1] as string, 16)
  const low = Number.parseInt(mapped[2] as string, 16)
  return [high >> 8, high & 0xff, low >> 8, low & 0xff].join('.')
}

/** `services.payments.retry.attempts`, `listeners[1].routes[0].name`. */
export function formatPath(path: readonly (string | number)[]): string {
  if (path.length === 0) return '(root)'
  let out = ''
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`
    // A key from the file may be any length: a long one is cut as values are (echo).
    else if (/^[A-Za-z_][A-Za-z0-9_-]{0,99}$/.test(part)) out += out === '' ? part : `.${part}`
    else out += `[${echo(part, true)}]`
  }
  return out
}
