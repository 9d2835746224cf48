// The YAML shape of the proxy config, as a zod 4 schema. The schema describes what a person
// writes (with defaults filled in); `toProxyConfig` turns the parsed value into the resolved
// `ProxyConfig` the rest of the proxy uses. Keeping the two apart keeps the JSON Schema (made
// from this schema for editors) free of transforms, and `ProxyConfig` free of YAML spelling.
// Cross-field rules (targets name defined services, unique ports, ...) live in checks.ts.

import { isIPv4, isIPv6 } from 'node:net'
import { z } from 'zod'
import { maxTimerDelayMs } from '../../core/clock.js'
import { httpTokenPattern } from '../../http/token.js'
import { DEADLINE_HEADER } from '../../policies/deadline.js'
import type {
  DiscoveryConfig,
  ListenerConfig,
  OutboundAuthConfig,
  ProxyConfig,
  RouteConfig,
  SecretSource,
  ServiceConfig,
  WebSocketConfig,
} from '../contracts.js'
import { normalizePath } from '../inbound/normalize-path.js'
import { retryAffinityDefaults } from '../inbound/retry-affinity.js'
import { maxRouteWeight } from '../inbound/routes.js'
import { DEFAULT_VIA_PSEUDONYM, viaPseudonymPattern } from '../via.js'
import { echo } from './errors.js'

// Schema-level messages are the "expected ..." half of a problem line; load.ts adds the path
// and the value that was found.
/** The WebSocket settings `websocket: true` stands for. */
export const websocketDefaults = { idleTimeoutMs: 300_000 } as const

function int(min: number, max = Number.MAX_SAFE_INTEGER): z.ZodInt {
  const text = max === Number.MAX_SAFE_INTEGER ? `integer >= ${min}` : `integer in [${min}, ${max}]`
  return z.int({ error: text }).min(min, { error: text }).max(max, { error: text })
}

function ms(min = 0): z.ZodInt {
  return int(min, maxTimerDelayMs)
}

// Statuses a retry may cure: the upstream's own failures (5xx), a request too slow to arrive
// (408), one sent too early in TLS early data (425), and load shedding (429). A 1xx-3xx is an
// answer, and any other 4xx the same request would get again.
function retryableStatus(): z.ZodInt {
  const text = 'a status worth retrying (408, 425, 429 or 500-599)'
  // The bounds also tell an editor (JSON Schema); past them, the refinement is not run, so a
  // status out of range is reported once.
  return z
    .int({ error: text })
    .min(408, { error: text, abort: true })
    .max(599, { error: text, abort: true })
    .refine((s) => s === 408 || s === 425 || s === 429 || s >= 500, { error: text })
    .meta({ anyOf: [{ enum: [408, 425, 429] }, { minimum: 500 }] })
}

function num(min: number, max: number): z.ZodNumber {
  const text = `number in [${min}, ${max}]`
  return z.number({ error: text }).min(min, { error: text }).max(max, { error: text })
}

function text(what = 'non-empty string'): z.ZodString {
  return z.string({ error: what }).min(1, { error: what })
}

// A `$` before a name or `{` is a variable as shells and docker-compose write one, which the
// config does not substitute: `${EP_FILE}` was taken as a discovery file of that name (waited for
// for ever), `sqlite:${DATA_DIR}/idem.db` made a folder `${DATA_DIR}` in the working folder.
const variablePattern = /\$(?:\{|[A-Za-z_])/
const noVariableText = '(the config substitutes no variables: write it out)'

/** A non-empty path or URL without a shell variable in it (see variablePattern). */
function literal(what: string): z.ZodString {
  return text(what).refine((value) => !variablePattern.test(value), {
    error: `${what} ${noVariableText}`,
  })
}

function filePath(): z.ZodString {
  return literal('file path')
}

const secretText =
  '{ env: NAME } or { file: path } (secrets are never written inline in the config)'

// Any other text (`ORDERS-TOKEN`, `$ORDERS_TOKEN`, the token itself) names no variable a shell
// sets, so the secret would be missing at run time: requests without credentials, or an admin
// API that refuses every call.
const envNameText = 'environment variable name (letters, digits and "_", not starting with a digit)'
const envName = z
  .string({ error: envNameText })
  .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, { error: envNameText })

/** `{ env: NAME }` or `{ file: path }`: where a secret is read from. */
export const secretSourceSchema = z
  .union([z.strictObject({ env: envName }), z.strictObject({ file: filePath() })], {
    error: secretText,
  })
  .describe(secretText)

const namePattern = /^[A-Za-z0-9][A-Za-z0-9._-]*$/
/** What a service, listener or route name may be (the "expected ..." text). */
export const nameText = 'name of letters, digits, ".", "_" or "-" (starting with a letter or digit)'
const serviceName = z
  .string({ error: nameText })
  .regex(namePattern, { error: nameText })
  .max(64, { error: nameText })

const headerName = z
  .string({ error: 'HTTP header name' })
  .regex(httpTokenPattern, { error: 'HTTP header name' })

// Node hands the proxy a header value with the spaces and tabs around it removed, and reads its
// bytes as Latin-1, so a value written with whitespace around it, a control character, or a
// character outside ASCII (a client sends UTF-8) could never be equal to one a request carries:
// the route would never be taken, without a word.
const headerValueText = 'a header value of printable ASCII, without leading or trailing whitespace'
const headerValue = z
  .string({ error: 'string' })
  .regex(/^(?:[\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?)?$/, { error: headerValueText })

// The proxy's name in Via (RFC 9110 §7.6.3): a token, or false for no Via at all.
const viaText =
  "false or a pseudonym (1 to 64 letters, digits and !#$%&'*+-.^_`|~) to name the proxy in Via"

// A cookie name is a token (RFC 6265 §4.1.1): one with `=`, `;` or a space is never read out of
// a Cookie header, so the route would never stick.
const cookieNameText = "cookie name (letters, digits and !#$%&'*+-.^_`|~)"
const cookieName = z
  .string({ error: cookieNameText })
  .regex(httpTokenPattern, { error: cookieNameText })

const pathPrefix = z
  .string({ error: 'path starting with "/"' })
  .startsWith('/', { error: 'path starting with "/"' })

// Route prefixes are compared with the normalized request path (inbound/normalize-path.ts), so
// one written in another form (`%7e` for `~`, lower-case hex, `//`, dot segments, a query) could
// never match: every request would fall through to the next route without a word. Such a
// prefix is refused, naming the form to write.
const routePrefix = pathPrefix
  .refine(
    (value) => {
      // A prefix without the leading `/` is pathPrefix's to name.
      if (!value.startsWith('/')) return true
      const normalized = normalizePath(value)
      return normalized.ok && normalized.path === value
    },
    {
      error: (issue) => {
        const normalized = normalizePath(String(issue.input))
        return normalized.ok
          ? `a normalized path (${echo(normalized.path)})`
          : `a normalized path (${normalized.reason})`
      },
    },
  )
  // For the JSON Schema: visible ASCII without `\`, `#` or `?` (normalizePath refuses those);
  // percent-encoding, `//` and dot segments are left to the loader.
  .meta({ pattern: '^/[!"$->@-\\[\\]-~]*$' })

const methodPattern = /^[A-Z]+$/
const method = z
  .string({ error: 'upper-case HTTP method (GET, POST, ...)' })
  .regex(methodPattern, { error: 'upper-case HTTP method (GET, POST, ...)' })

const endpointUrlText =
  'http:// or https:// URL of a host name or IP address and a port (1-65535), without credentials, path, query or fragment'
const endpointUrl = z
  .string({ error: 'http:// or https:// URL' })
  .refine(isEndpointUrl, {
    error: (issue) =>
      String(issue.input).includes('$')
        ? `${endpointUrlText} (the config substitutes no variables: write the host itself)`
        : endpointUrlText,
  })
  // For the JSON Schema, isEndpointUrl's shape: scheme, a bracketed IPv6 address or a name of
  // dnsNamePattern's characters, a port of up to 5 digits (its range is the loader's), at most
  // a `/` after.
  .meta({
    pattern:
      '^[Hh][Tt][Tt][Pp][Ss]?://(?:\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9_-]{1,63}(?:\\.[A-Za-z0-9_-]{1,63})*\\.?)(?::[0-9]{1,5})?/?$',
  })

// The service runtime takes an endpoint's origin only (upstream/discovery.ts parseEndpointUrl
// refuses a path at start), so a path here would pass `--check` and then stop the start.
function isEndpointUrl(value: string): boolean {
  if (!/^https?:\/\//i.test(value)) return false
  try {
    const url = new URL(value)
    return (
      isEndpointHost(url.hostname) &&
      url.port !== '0' &&
      url.username === '' &&
      url.password === '' &&
      (url.pathname === '/' || url.pathname === '') &&
      url.search === '' &&
      url.hash === ''
    )
  } catch {
    return false
  }
}

// WHATWG URL takes `$`, `{`, `}` and more in a host (`http://${ORDERS_HOST}:19101`), which
// passed `--check` and then failed every request with 502: the host must be an IP address
// (URL has normalized an IPv4 one, and validated a bracketed IPv6 one) or a name the resolver
// can look up, as discovery.dns.name's must (punycode for an international name).
function isEndpointHost(host: string): boolean {
  return host.startsWith('[') || isIPv4(host) || dnsNamePattern.test(host)
}

const bindHostText =
  'IP address or host name to bind (IPv4 as a dotted quad: "127.0.0.1"; IPv6 without brackets: "::1")'
const hostLabel = '[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?'
const hostNamePattern = new RegExp(`^${hostLabel}(?:\\.${hostLabel})*\\.?$`)

// The address a listener or the admin API binds. Anything else (a bracketed IPv6 literal, a
// URL, a typo with a space) passed `--check` and then failed the start (or a reload) with
// ENOTFOUND from the resolver.
// A name whose last label is a number (`127.0.0.1.`, `127.000.000.001`, `127.1`, `0x7f.0.0.1`)
// is no host name: the resolver reads some as an IPv4 address (leading zeros as octal: `010`
// is 8) and refuses others (ENOTFOUND), so an IPv4 address is written as a dotted quad.
const ipv4Octet = '(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])'
const ipv4Pattern = `(?:${ipv4Octet}\\.){3}${ipv4Octet}`
const numericLastLabel = /(?:^|\.)(?:\d+|0x[0-9a-f]*)\.?$/i
const bindHost = z
  .string({ error: bindHostText })
  .refine(
    (value) =>
      isIPv4(value) ||
      isIPv6(value) ||
      (hostNamePattern.test(value) && !numericLastLabel.test(value)),
    { error: bindHostText },
  )
  // For the JSON Schema: a dotted quad, something of IPv6 characters with a `:` (its exact
  // form is the loader's), or a host name whose last label is no number.
  .meta({
    pattern: `^(?:${ipv4Pattern}|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*(?:%[^\\s%]+)?|(?!(?:[^.]*\\.)*(?:[0-9]+|0[Xx][0-9A-Fa-f]*)\\.?$)${hostLabel}(?:\\.${hostLabel})*\\.?)$`,
  })

const dnsServerText = '"ip" or "ip:port" of a DNS server ("[ipv6]:port" with a port)'

// What dns.Resolver#setServers takes without throwing at start; a port of 0 even aborts the
// process there (a native assertion), and one above 65535 is taken and then never answers.
function isDnsServer(value: string): boolean {
  if (isIPv4(value) || isIPv6(value)) return true
  const bracketed = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(value)
  if (bracketed !== null) return isIPv6(bracketed[1] as string) && isPort(bracketed[2])
  const withPort = /^([^:]+):(\d{1,5})$/.exec(value)
  return withPort !== null && isIPv4(withPort[1] as string) && isPort(withPort[2])
}

function isPort(text: string | undefined): boolean {
  return text === undefined || (Number(text) >= 1 && Number(text) <= 65_535)
}

// The name the resolver looks up: labels of letters, digits, "-" and "_" (SRV names start with
// `_service._proto`), at most 63 characters each and 253 in all. Anything else (a URL, a port,
// a space, `${HOST}` from a file written for a tool that substitutes variables) passed
// `--check`, and then every lookup failed and every request to the service was refused.
const dnsNameText =
  'a host name to resolve (labels of letters, digits, "-" or "_", up to 63 characters each; no scheme or port)'
const dnsNamePattern = /^(?=.{1,253}\.?$)[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*\.?$/
const dnsName = z.string({ error: dnsNameText }).regex(dnsNamePattern, { error: dnsNameText })

const dnsDiscoverySchema = z.strictObject({
  name: dnsName,
  recordType: z.enum(['A', 'AAAA', 'SRV']).default('A'),
  port: int(1, 65_535).optional(),
  scheme: z.enum(['http', 'https']).default('http'),
  minRefreshMs: ms().default(1_000),
  maxRefreshMs: ms(1).default(30_000),
  servers: z
    .array(z.string({ error: dnsServerText }).refine(isDnsServer, { error: dnsServerText }), {
      error: 'list of DNS servers',
    })
    .min(1, { error: 'non-empty list of DNS servers' })
    .optional(),
})

const discoverySchema = z.strictObject({
  dns: dnsDiscoverySchema.optional(),
  file: filePath().optional(),
})

const timeoutsSchema = z.strictObject({
  connectMs: ms(1).default(1_000),
  readMs: ms(1).default(10_000),
  overallMs: ms(1).default(30_000),
})

const retrySchema = z.strictObject({
  attempts: int(1).default(3),
  baseDelayMs: ms().default(25),
  maxDelayMs: ms().default(1_000),
  retryOnStatus: z.array(retryableStatus()).default([502, 503, 504]),
  budget: z
    .strictObject({
      ratio: num(0, 10).default(0.2),
      minPerSecond: num(0, 1_000_000).default(10),
    })
    .default({ ratio: 0.2, minPerSecond: 10 }),
  addIdempotencyKey: z.boolean({ error: 'true or false' }).default(false),
})

const breakerSchema = z.strictObject({
  failureThreshold: int(1).default(5),
  cooldownMs: ms(1).default(10_000),
  halfOpenProbes: int(1).default(1),
})

const bulkheadSchema = z.strictObject({
  maxConcurrent: int(1).default(64),
  maxQueue: int(0).default(64),
  connectionsPerEndpoint: int(1, 10_000).default(32),
})

/** The cap of one outlier ejection when the file sets none (unless baseEjectionMs is longer). */
const defaultMaxEjectionMs = 300_000

const outlierSchema = z.strictObject({
  consecutiveFailures: int(1).default(5),
  baseEjectionMs: ms(1).default(30_000),
  // Default: the longer of 300000 and baseEjectionMs (filled in by toProxyConfig).
  maxEjectionMs: ms(1).optional(),
  maxEjectedPercent: num(0, 100).default(50),
})

const upstreamTlsSchema = z.strictObject({
  caFile: filePath().optional(),
  certFile: filePath().optional(),
  keyFile: filePath().optional(),
  serverName: text('host name').optional(),
  verify: z.boolean({ error: 'true or false' }).default(true),
})

const authSchema = z.strictObject({
  bearer: secretSourceSchema.optional(),
  apiKey: z
    .strictObject({
      header: headerName.default('x-api-key'),
      env: envName.optional(),
      file: filePath().optional(),
    })
    .optional(),
})

/** One upstream service in the YAML. */
// Off by default: a gateway route, or a service for the ambassador, opts in to tunnelling
// WebSocket handshakes (upstream/tunnel.ts).
const websocketSchema = z
  .union(
    [
      z.boolean({ error: 'true or false' }),
      z.strictObject({
        idleTimeoutMs: ms(1_000).default(websocketDefaults.idleTimeoutMs),
      }),
    ],
    { error: 'true, false or { idleTimeoutMs }' },
  )
  .default(false)

// A section that is off unless given, which `false` also turns off: a service that takes
// shared settings by a merge key (`<<: *defaults`) must be able to drop one of them, and null
// cannot say so (it is refused, see nullSectionProblem in load.ts).
function offOr<T extends z.ZodType>(section: T, what: string) {
  return z
    .union([z.literal(false), section], { error: `false (off) or a mapping of ${what} settings` })
    .optional()
}

export const serviceSchema = z.strictObject({
  endpoints: z
    .array(endpointUrl, { error: 'list of endpoint URLs' })
    .min(1, { error: 'non-empty list of endpoint URLs' })
    .optional(),
  discovery: discoverySchema.optional(),
  loadBalancer: z.enum(['round-robin', 'least-request']).default('round-robin'),
  timeouts: timeoutsSchema.default({ connectMs: 1_000, readMs: 10_000, overallMs: 30_000 }),
  retry: offOr(retrySchema, 'retry'),
  circuitBreaker: offOr(breakerSchema, 'circuit breaker'),
  bulkhead: bulkheadSchema.default({ maxConcurrent: 64, maxQueue: 64, connectionsPerEndpoint: 32 }),
  outlierEjection: offOr(outlierSchema, 'outlier ejection'),
  tls: upstreamTlsSchema.default({ verify: true }),
  auth: authSchema.optional(),
  rewriteHost: z.boolean({ error: 'true or false' }).default(true),
  websocket: websocketSchema,
})

/** The listener `limits` a file leaves out. */
export const limitsDefaults = {
  maxHeaderBytes: 16_384,
  maxHeaders: 100,
  maxBodyBytes: 1_048_576,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  keepAliveTimeoutMs: 5_000,
  maxConnections: 10_000,
}

const limitsSchema = z.strictObject({
  maxHeaderBytes: int(1_024, 1_048_576).default(limitsDefaults.maxHeaderBytes),
  maxHeaders: int(1, 10_000).default(limitsDefaults.maxHeaders),
  maxBodyBytes: int(0, 1_073_741_824).default(limitsDefaults.maxBodyBytes),
  headersTimeoutMs: ms(1).default(limitsDefaults.headersTimeoutMs),
  requestTimeoutMs: ms(1).default(limitsDefaults.requestTimeoutMs),
  keepAliveTimeoutMs: ms(1).default(limitsDefaults.keepAliveTimeoutMs),
  maxConnections: int(1).default(limitsDefaults.maxConnections),
})

const listenerTlsSchema = z.strictObject({
  certFile: filePath(),
  keyFile: filePath(),
  clientCaFile: filePath().optional(),
})

const routeSchema = z.strictObject({
  name: serviceName,
  match: z
    .strictObject({
      prefix: routePrefix.default('/'),
      methods: z.array(method).min(1, { error: 'non-empty list of methods' }).optional(),
      headers: z.record(headerName, headerValue).default({}),
      caseSensitive: z.boolean().default(true),
    })
    .default({ prefix: '/', headers: {}, caseSensitive: true }),
  targets: z
    .array(
      z.strictObject({
        service: serviceName,
        weight: num(0, maxRouteWeight).default(1),
      }),
      { error: 'list of { service, weight }' },
    )
    .min(1, { error: 'non-empty list of { service, weight }' }),
  sticky: z
    .strictObject({
      header: headerName.optional(),
      cookie: cookieName.optional(),
    })
    .optional(),
  stripPrefix: routePrefix.optional(),
  shadow: z
    .strictObject({
      service: serviceName,
      sampleRate: num(0, 1).default(1),
      ignoreFields: z.array(pathPrefix).default([]),
      ignoreHeaders: z.array(headerName).default([]),
      learnNoise: z.boolean({ error: 'true or false' }).default(true),
      keepExamples: int(0, 10_000).default(20),
      // Safe methods only unless listed: a shadowed POST runs its side effects twice, once on
      // each side, which is only right for a shadow that writes to a store of its own.
      methods: z
        .array(method)
        .min(1, { error: 'non-empty list of methods' })
        .default(['GET', 'HEAD', 'OPTIONS']),
    })
    .optional(),
  idempotency: z
    .strictObject({
      // HEAD is refused as breakwater/idempotency's `methods` refuses it: no body to record.
      methods: z
        .array(
          method
            .refine((m) => m !== 'HEAD', {
              error: 'a method other than HEAD (safe, no body to record)',
            })
            .meta({ not: { const: 'HEAD' } }),
        )
        .min(1, { error: 'non-empty list of methods' })
        .default(['POST']),
      ttlMs: ms(1).default(86_400_000),
    })
    .optional(),
  // On by default: a retry that crosses to the other side of a migration does the work twice.
  retryAffinity: z
    .union(
      [
        z.literal(false),
        z.strictObject({
          header: headerName.default(retryAffinityDefaults.header),
          ttlMs: ms(1).default(retryAffinityDefaults.ttlMs),
          maxKeys: int(1, 10_000_000).default(retryAffinityDefaults.maxKeys),
        }),
      ],
      { error: 'false or { header, ttlMs, maxKeys }' },
    )
    .default({ ...retryAffinityDefaults }),
  // Off by default: a route opts in to tunnelling WebSocket handshakes (upstream/tunnel.ts).
  websocket: websocketSchema,
})

const listenerSchema = z.strictObject({
  name: serviceName,
  role: z.enum(['ambassador', 'gateway']),
  host: bindHost.default('127.0.0.1'),
  port: int(0, 65_535),
  tls: listenerTlsSchema.optional(),
  limits: limitsSchema.default(limitsDefaults),
  routes: z.array(routeSchema, { error: 'list of routes' }).optional(),
  services: z.array(serviceName, { error: 'list of service names' }).optional(),
  trustForwardedHeaders: z.boolean({ error: 'true or false' }).default(false),
})

/**
 * The proxy config as written in YAML (with defaults). Unknown keys are errors. Secrets are only
 * ever `{ env }` / `{ file }` references. See docs/proxy.md for every field. Top-level
 * extension fields (`x-...`) are removed by the loader before this schema sees the document.
 */
export const proxyConfigSchema = z
  .strictObject({
    services: z.record(serviceName, serviceSchema, { error: 'mapping of service name to service' }),
    listeners: z
      .array(listenerSchema, { error: 'list of listeners' })
      .min(1, { error: 'non-empty list of listeners' }),
    admin: z
      .strictObject({
        host: bindHost.default('127.0.0.1'),
        port: int(0, 65_535),
        token: secretSourceSchema,
        // Operators need a handful of connections; a cap keeps a flood on the admin port from
        // holding sockets and memory that the proxy's own listeners need.
        maxConnections: int(1, 100_000).default(64),
      })
      .optional(),
    idempotency: z
      .strictObject({
        url: literal('"memory", "sqlite:<path>" or "postgres://..." URL'),
      })
      .optional(),
    accessLog: z.boolean({ error: 'true or false' }).default(true),
    deadlineHeader: headerName.default(DEADLINE_HEADER),
    via: z
      .union(
        [
          z.literal(false),
          z.string({ error: viaText }).regex(viaPseudonymPattern, { error: viaText }),
        ],
        { error: viaText },
      )
      .default(DEFAULT_VIA_PSEUDONYM),
    drainTimeoutMs: ms().default(30_000),
    // At least 1: a start given no time at all would always fail.
    startTimeoutMs: ms(1).default(60_000),
    workers: int(1, 256).default(1),
  })
  .describe('breakwater proxy configuration (breakwater proxy --config file.yaml)')

/** The YAML shape after validation and defaults. */
export type ProxyConfigDocument = z.output<typeof proxyConfigSchema>

/** The YAML shape as written (optional fields may be left out). */
export type ProxyConfigInput = z.input<typeof proxyConfigSchema>

type ServiceDocument = z.output<typeof serviceSchema>
type ListenerDocument = z.output<typeof listenerSchema>
type RouteDocument = z.output<typeof routeSchema>

/**
 * Turns a validated document (schema and cross-field checks passed) into the resolved
 * `ProxyConfig`.
 */
export function toProxyConfig(doc: ProxyConfigDocument): ProxyConfig {
  const services = new Map<string, ServiceConfig>()
  for (const [name, service] of Object.entries(doc.services))
    services.set(name, toService(name, service))
  return {
    services,
    listeners: doc.listeners.map(toListener),
    admin:
      doc.admin === undefined
        ? undefined
        : {
            host: doc.admin.host,
            port: doc.admin.port,
            token: toSecret(doc.admin.token),
            maxConnections: doc.admin.maxConnections,
          },
    idempotency: doc.idempotency === undefined ? undefined : { url: doc.idempotency.url },
    accessLog: doc.accessLog,
    deadlineHeader: doc.deadlineHeader.toLowerCase(),
    via: doc.via === false ? undefined : doc.via,
    drainTimeoutMs: doc.drainTimeoutMs,
    startTimeoutMs: doc.startTimeoutMs,
    workers: doc.workers,
  }
}

function toSecret(source: { env: string } | { file: string }): SecretSource {
  return 'env' in source ? { env: source.env } : { file: source.file }
}

function toDiscovery(service: ServiceDocument): DiscoveryConfig {
  if (service.endpoints !== undefined) return { kind: 'static', endpoints: service.endpoints }
  const dns = service.discovery?.dns
  if (dns !== undefined)
    return {
      kind: 'dns',
      name: dns.name,
      recordType: dns.recordType,
      port: dns.port,
      scheme: dns.scheme,
      minRefreshMs: dns.minRefreshMs,
      maxRefreshMs: dns.maxRefreshMs,
      ...(dns.servers === undefined ? {} : { servers: dns.servers }),
    }
  // checks.ts guarantees exactly one of endpoints, discovery.dns, discovery.file.
  return { kind: 'file', path: service.discovery?.file ?? '' }
}

function toAuth(auth: ServiceDocument['auth']): OutboundAuthConfig | undefined {
  if (auth?.bearer !== undefined) return { kind: 'bearer', token: toSecret(auth.bearer) }
  const apiKey = auth?.apiKey
  if (apiKey === undefined) return undefined
  return {
    kind: 'api-key',
    header: apiKey.header.toLowerCase(),
    key: apiKey.env !== undefined ? { env: apiKey.env } : { file: apiKey.file ?? '' },
  }
}

function toService(name: string, s: ServiceDocument): ServiceConfig {
  return {
    name,
    discovery: toDiscovery(s),
    loadBalancer: s.loadBalancer,
    timeouts: { ...s.timeouts },
    retry:
      s.retry === undefined || s.retry === false
        ? undefined
        : {
            attempts: s.retry.attempts,
            baseDelayMs: s.retry.baseDelayMs,
            maxDelayMs: s.retry.maxDelayMs,
            retryOnStatus: s.retry.retryOnStatus,
            budgetRatio: s.retry.budget.ratio,
            budgetMinPerSecond: s.retry.budget.minPerSecond,
            addIdempotencyKey: s.retry.addIdempotencyKey,
          },
    breaker:
      s.circuitBreaker === undefined || s.circuitBreaker === false
        ? undefined
        : { ...s.circuitBreaker },
    bulkhead: { ...s.bulkhead },
    outlierEjection:
      s.outlierEjection === undefined || s.outlierEjection === false
        ? undefined
        : {
            ...s.outlierEjection,
            // Envoy's max_ejection_time: 300 s, or baseEjectionMs when that is longer.
            maxEjectionMs:
              s.outlierEjection.maxEjectionMs ??
              Math.max(defaultMaxEjectionMs, s.outlierEjection.baseEjectionMs),
          },
    tls: {
      caFile: s.tls.caFile,
      certFile: s.tls.certFile,
      keyFile: s.tls.keyFile,
      serverName: s.tls.serverName,
      verify: s.tls.verify,
    },
    auth: toAuth(s.auth),
    rewriteHost: s.rewriteHost,
    websocket: toWebSocket(s.websocket),
  }
}

function toWebSocket(doc: false | true | { idleTimeoutMs: number }): WebSocketConfig | undefined {
  if (doc === false) return undefined
  return doc === true ? { ...websocketDefaults } : { idleTimeoutMs: doc.idleTimeoutMs }
}

function toRoute(r: RouteDocument): RouteConfig {
  const headers: Record<string, string> = {}
  for (const [key, value] of Object.entries(r.match.headers)) headers[key.toLowerCase()] = value
  return {
    name: r.name,
    match: {
      prefix: r.match.prefix,
      methods: r.match.methods,
      headers,
      caseSensitive: r.match.caseSensitive,
    },
    targets: r.targets.map((t) => ({ service: t.service, weight: t.weight })),
    sticky:
      r.sticky === undefined
        ? undefined
        : r.sticky.header !== undefined
          ? { header: r.sticky.header.toLowerCase() }
          : { cookie: r.sticky.cookie ?? '' },
    stripPrefix: r.stripPrefix,
    shadow:
      r.shadow === undefined
        ? undefined
        : {
            service: r.shadow.service,
            sampleRate: r.shadow.sampleRate,
            ignoreFields: r.shadow.ignoreFields,
            ignoreHeaders: r.shadow.ignoreHeaders.map((h) => h.toLowerCase()),
            learnNoise: r.shadow.learnNoise,
            keepExamples: r.shadow.keepExamples,
            methods: r.shadow.methods,
          },
    idempotency:
      r.idempotency === undefined
        ? undefined
        : { methods: r.idempotency.methods, ttlMs: r.idempotency.ttlMs },
    retryAffinity:
      r.retryAffinity === false
        ? undefined
        : {
            header: r.retryAffinity.header.toLowerCase(),
            ttlMs: r.retryAffinity.ttlMs,
            maxKeys: r.retryAffinity.maxKeys,
          },
    websocket: toWebSocket(r.websocket),
  }
}

function toListener(l: ListenerDocument): ListenerConfig {
  return {
    name: l.name,
    role: l.role,
    host: l.host,
    port: l.port,
    tls:
      l.tls === undefined
        ? undefined
        : { certFile: l.tls.certFile, keyFile: l.tls.keyFile, clientCaFile: l.tls.clientCaFile },
    limits: { ...l.limits },
    routes: (l.routes ?? []).map(toRoute),
    services: l.services,
    trustForwardedHeaders: l.trustForwardedHeaders,
  }
}
