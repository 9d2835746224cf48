// The seams between the proxy's parts. The config loader produces `ProxyConfig`; the upstream
// side (src/proxy/upstream) turns each `ServiceConfig` into a `ServiceRuntime`; the inbound side
// (src/proxy/inbound) turns each `ListenerConfig` into a request handler that calls services
// through `ServiceRegistry`; src/proxy/runtime.ts wires them, owns reload and the admin API.
// Everything here is plain data or small interfaces so each part is testable alone.

import type {
  IncomingMessage,
  OutgoingHttpHeader,
  OutgoingHttpHeaders,
  ServerResponse,
} from 'node:http'
import type { Duplex } from 'node:stream'
import type { Clock } from '../core/clock.js'
import type { Logger } from '../observability/logger.js'
import type { MetricsRegistry } from '../observability/metrics.js'
import type { CircuitState } from '../policies/circuit-breaker.js'
import type { FastRequestHandler } from './inbound/fast-connection.js'

// ---------------------------------------------------------------------------------------------
// Resolved configuration (what the YAML becomes after validation and defaults)
// ---------------------------------------------------------------------------------------------

/**
 * A secret's source in the YAML: `{ env: NAME }` or `{ file: path }`. Resolved when used (and
 * re-read when a file changes), never logged and never shown by the admin API.
 */
export type SecretSource = { readonly env: string } | { readonly file: string }

/** How a service finds its endpoints. */
export type DiscoveryConfig =
  | { readonly kind: 'static'; readonly endpoints: readonly string[] }
  | {
      readonly kind: 'dns'
      /** Host name to resolve. */
      readonly name: string
      /** Record type: A/AAAA give addresses (port from `port`), SRV gives address and port. */
      readonly recordType: 'A' | 'AAAA' | 'SRV'
      /** Port for A/AAAA records. */
      readonly port: number | undefined
      /** `http` or `https`. */
      readonly scheme: 'http' | 'https'
      /** Re-resolve no sooner than this even when the TTL is shorter (ms). */
      readonly minRefreshMs: number
      /** Re-resolve at least this often, and retry a failed lookup after it (ms). */
      readonly maxRefreshMs: number
      /**
       * DNS servers to ask (`ip` or `ip:port`, as `dns.Resolver#setServers` takes them);
       * default: the system's resolvers.
       */
      readonly servers?: readonly string[]
    }
  | {
      readonly kind: 'file'
      /** A file with one endpoint URL per line (`#` comments) or a JSON/YAML array of URLs. */
      readonly path: string
    }

/** Per-service timeouts (ms). */
export interface TimeoutsConfig {
  /** TCP + TLS connect. */
  readonly connectMs: number
  /** Time to response headers, and the longest gap between body chunks. */
  readonly readMs: number
  /** Whole exchange including retries, further bounded by the inbound deadline. */
  readonly overallMs: number
}

/** Retry settings of a service. */
export interface RetryConfig {
  /** Attempts in all (1 = no retry). */
  readonly attempts: number
  /** Full-jitter backoff base (ms). */
  readonly baseDelayMs: number
  /** Backoff cap (ms). */
  readonly maxDelayMs: number
  /** Statuses treated as transient (retried, counted by the breaker). */
  readonly retryOnStatus: readonly number[]
  /** Retry budget: retries may add at most this fraction of requests... */
  readonly budgetRatio: number
  /** ...plus this many retries per second. */
  readonly budgetMinPerSecond: number
  /**
   * Non-idempotent methods (POST, PATCH) are retried only with an Idempotency-Key; when true the
   * proxy adds a fresh key to such requests that lack one, so they become retryable.
   */
  readonly addIdempotencyKey: boolean
}

/** Circuit breaker settings of a service (consecutive failures, as in the policies). */
export interface BreakerConfig {
  /** Consecutive failures that open the breaker. */
  readonly failureThreshold: number
  /** Time open before a half-open probe (ms). */
  readonly cooldownMs: number
  /** Probes allowed while half-open. */
  readonly halfOpenProbes: number
}

/** Bulkhead: a service's own concurrency cap, queue and connection pool size. */
export interface BulkheadConfig {
  /** Requests in flight to the service at once. */
  readonly maxConcurrent: number
  /** Requests waiting for a slot; more are rejected with 503 at once. */
  readonly maxQueue: number
  /** Connections per endpoint. */
  readonly connectionsPerEndpoint: number
}

/** Outlier ejection of single endpoints (Envoy's model, consecutive failures). */
export interface OutlierEjectionConfig {
  /** Consecutive failures (connect errors, resets, 5xx) of one endpoint that eject it. */
  readonly consecutiveFailures: number
  /** First ejection time; the nth ejection of the same endpoint lasts n times this (ms). */
  readonly baseEjectionMs: number
  /**
   * Longest one ejection lasts, however many came before (ms; Envoy's `max_ejection_time`).
   * The config loader always sets it.
   * @default the longer of 300000 and baseEjectionMs
   */
  readonly maxEjectionMs?: number
  /** Never eject more than this percentage of a service's endpoints. */
  readonly maxEjectedPercent: number
}

/** TLS origination to a service's `https` endpoints. */
export interface UpstreamTlsConfig {
  /** PEM CA bundle file; default: Node's trusted roots. */
  readonly caFile: string | undefined
  /** Client certificate PEM (mTLS), with `keyFile`. */
  readonly certFile: string | undefined
  /** Client key PEM (mTLS). */
  readonly keyFile: string | undefined
  /** SNI and verification name, default: the endpoint's host. */
  readonly serverName: string | undefined
  /** Verify the server certificate. Default true; false is logged as a warning at start. */
  readonly verify: boolean
}

/** Credentials the proxy adds to outbound requests of a service. */
export type OutboundAuthConfig =
  | { readonly kind: 'bearer'; readonly token: SecretSource }
  | { readonly kind: 'api-key'; readonly header: string; readonly key: SecretSource }

/** One upstream service. */
export interface ServiceConfig {
  /** The service's name (the YAML map key; used in `/<service>/` paths and metrics). */
  readonly name: string
  readonly discovery: DiscoveryConfig
  readonly loadBalancer: 'round-robin' | 'least-request'
  readonly timeouts: TimeoutsConfig
  /** Undefined: no retries. */
  readonly retry: RetryConfig | undefined
  /** Undefined: no breaker. */
  readonly breaker: BreakerConfig | undefined
  readonly bulkhead: BulkheadConfig
  /** Undefined: no ejection. */
  readonly outlierEjection: OutlierEjectionConfig | undefined
  /** TLS settings for `https` endpoints. */
  readonly tls: UpstreamTlsConfig
  /** Undefined: no credentials added. */
  readonly auth: OutboundAuthConfig | undefined
  /**
   * Rewrite the `Host` header to the endpoint's host (true) or pass the inbound one (false).
   */
  readonly rewriteHost: boolean
  /**
   * WebSocket handshakes the ambassador tunnels to this service (`upstream/tunnel.ts`).
   * Undefined: the ambassador refuses them with 400. Gateway routes have their own setting.
   */
  readonly websocket?: WebSocketConfig | undefined
}

/** Match part of a route; all given conditions must hold. */
export interface RouteMatchConfig {
  /** Path prefix on the normalized path, matched at segment boundaries (`/orders` ≠ `/ordersx`). */
  readonly prefix: string
  /** Methods (upper case); undefined: any. */
  readonly methods: readonly string[] | undefined
  /** Header name (lower case) to exact value. */
  readonly headers: Readonly<Record<string, string>>
  /**
   * Whether the prefix is compared with the case of ASCII letters (`/pay` ≠ `/PAY`). `false`
   * for an app that routes without regard to case (Express by default), so that `/PAY`
   * takes this route and not the one after it. Undefined: true.
   */
  readonly caseSensitive?: boolean | undefined
}

/** A weighted target of a route (strangler fig split). */
export interface RouteTargetConfig {
  readonly service: string
  /** Relative weight, >= 0; at least one target of a route has weight > 0. */
  readonly weight: number
}

/** Shadow mode: also send to `service`, answer from the primary, compare the two. */
export interface ShadowConfig {
  readonly service: string
  /** Fraction of requests shadowed (0..1). */
  readonly sampleRate: number
  /** JSON pointer-like paths (`/createdAt`, `/items/* /id`) and header names ignored in diffs. */
  readonly ignoreFields: readonly string[]
  readonly ignoreHeaders: readonly string[]
  /**
   * Diffy-style noise: also call the primary a second time and drop fields that differ between
   * the two primary responses. Only for safe methods (GET, HEAD).
   */
  readonly learnNoise: boolean
  /** Latest mismatch examples kept per route for the admin API. */
  readonly keepExamples: number
  /**
   * Upper-case methods that are shadowed (default GET, HEAD, OPTIONS). A shadowed request runs
   * on both services, so an unsafe method listed here has its side effects twice: list one
   * only when the shadow writes to a store of its own.
   */
  readonly methods: readonly string[]
}

/** Idempotency-Key enforcement by the sidecar on a route. */
export interface RouteIdempotencyConfig {
  /** Methods for which a key is required and enforced. */
  readonly methods: readonly string[]
  /** How long stored responses are kept (ms). */
  readonly ttlMs: number
}

/** Retry affinity settings of a route (see `inbound/retry-affinity.ts`). */
export interface RetryAffinityConfig {
  /** Lower-case name of the header holding the key (`idempotency-key`). */
  readonly header: string
  /** How long a key stays pinned to its first target, from its first request (ms). */
  readonly ttlMs: number
  /** Most keys remembered per route; the oldest pin is dropped to make room. */
  readonly maxKeys: number
}

/** One strangler-fig route. Routes are tried in the order written; the first match wins. */
export interface RouteConfig {
  readonly name: string
  readonly match: RouteMatchConfig
  readonly targets: readonly RouteTargetConfig[]
  /**
   * Sticky split: hash this header or cookie to choose the target, so one user stays on one
   * side while the weights do not change. Undefined: random per request.
   */
  readonly sticky: { readonly header: string } | { readonly cookie: string } | undefined
  /** Strip this prefix before forwarding (e.g. `/api` → ``). */
  readonly stripPrefix: string | undefined
  readonly shadow: ShadowConfig | undefined
  readonly idempotency: RouteIdempotencyConfig | undefined
  /**
   * Retry affinity: a request carrying this header's key goes where the key's first request
   * went, even after the weights moved (see `inbound/retry-affinity.ts`). Config files get it
   * by default (`idempotency-key`, 10 minutes, 100,000 keys); `retryAffinity: false` turns it
   * off. Undefined (a config built by hand without it): off.
   */
  readonly retryAffinity?: RetryAffinityConfig | undefined
  /**
   * WebSocket upgrades accepted on this route (tunnelled to the chosen target, see
   * `upstream/tunnel.ts`). Undefined: an `Upgrade` request is refused with 400.
   */
  readonly websocket?: WebSocketConfig | undefined
}

/** WebSocket settings of a gateway route, or of a service for the ambassador. */
export interface WebSocketConfig {
  /** A tunnel through which no byte passed either way for this long is closed. */
  readonly idleTimeoutMs: number
}

/** Inbound TLS (termination), hot-reloaded when the files change. */
export interface ListenerTlsConfig {
  readonly certFile: string
  readonly keyFile: string
  /** Require and verify client certificates against this CA (inbound mTLS). */
  readonly clientCaFile: string | undefined
}

/** Limits against abuse, per listener. */
export interface LimitsConfig {
  /** Total request header bytes (Node's maxHeaderSize). */
  readonly maxHeaderBytes: number
  /** Header count; more is answered 431 (Node would silently drop the rest). */
  readonly maxHeaders: number
  /** Request body bytes; more is answered 413. */
  readonly maxBodyBytes: number
  /** Time to receive the whole request head (slowloris). */
  readonly headersTimeoutMs: number
  /** Time to receive the whole request. */
  readonly requestTimeoutMs: number
  /** Idle keep-alive connection timeout. */
  readonly keepAliveTimeoutMs: number
  /** Open connections; more are refused. */
  readonly maxConnections: number
}

/**
 * A listener. `ambassador`: the local app calls `/<service>/<path>`. `gateway`: requests are
 * routed by `routes` (strangler fig; a sidecar is a gateway whose last route goes to the app).
 */
export interface ListenerConfig {
  readonly name: string
  readonly role: 'ambassador' | 'gateway'
  readonly host: string
  readonly port: number
  readonly tls: ListenerTlsConfig | undefined
  readonly limits: LimitsConfig
  /** Gateway routes (empty for ambassadors). */
  readonly routes: readonly RouteConfig[]
  /** Services an ambassador exposes; undefined: all services. */
  readonly services: readonly string[] | undefined
  /**
   * Gateway: keep the client's `X-Forwarded-For` / `-Proto` / `-Host` and `Forwarded`,
   * `X-Real-IP` (appending the client address to `X-Forwarded-For`), for a listener behind a
   * trusted load balancer. False or undefined: those headers are replaced / dropped.
   */
  readonly trustForwardedHeaders?: boolean
}

/** The admin API listener. */
export interface AdminConfig {
  readonly host: string
  readonly port: number
  /** Bearer token for the admin API (not for /metrics, /healthz, /readyz). */
  readonly token: SecretSource
  /**
   * Open connections the admin listener keeps; more are closed as they arrive (default 64 in
   * the config; unlimited when absent from a config built by hand).
   */
  readonly maxConnections?: number
}

/** Where the sidecar's idempotency records live. */
export interface IdempotencyStoreConfig {
  /** `sqlite:<path>` | `postgres://...` | `memory`. */
  readonly url: string
}

/** The whole proxy configuration. */
export interface ProxyConfig {
  readonly services: ReadonlyMap<string, ServiceConfig>
  readonly listeners: readonly ListenerConfig[]
  readonly admin: AdminConfig | undefined
  readonly idempotency: IdempotencyStoreConfig | undefined
  /** JSON access log lines on stdout (or off). */
  readonly accessLog: boolean
  /** Inbound deadline header honoured and passed on (default `x-breakwater-deadline-ms`). */
  readonly deadlineHeader: string
  /**
   * The pseudonym the proxy adds to `Via` on the requests it forwards and the responses it
   * passes back (`via` in the YAML, default `breakwater`); undefined: no Via is added.
   */
  readonly via?: string | undefined
  /** Drain time on SIGTERM before open connections are cut (ms). */
  readonly drainTimeoutMs: number
  /**
   * How long a start may take (ms): reading the file, opening the idempotency store, binding
   * the listeners and the admin API. Past it the start fails with `PROXY_START_TIMEOUT`. A
   * reload's start is bounded by the new config's value; past it the reload is refused
   * (`CONFIG_INVALID`) and the running config stays.
   */
  readonly startTimeoutMs: number
  /** Worker processes (1 = single process). */
  readonly workers: number
}

// ---------------------------------------------------------------------------------------------
// Runtime seams
// ---------------------------------------------------------------------------------------------

/** Shared things every part gets from the runtime. */
export interface ProxyDeps {
  readonly clock: Clock
  readonly logger: Logger
  readonly metrics: MetricsRegistry
}

/**
 * A request the inbound side hands to a service: the head already validated, normalized and
 * stripped of hop-by-hop headers; the body fully buffered (so retries can replay it).
 */
export interface ForwardRequest {
  readonly method: string
  /** Origin-form target to send upstream: normalized path plus the raw query (`/a/b?x=1`). */
  readonly target: string
  /** Lower-case header names; hop-by-hop headers already removed; no `host`. */
  readonly headers: Record<string, string | string[]>
  /** The inbound `Host` (forwarded when the service does not rewrite it). */
  readonly host: string
  readonly body: Buffer | undefined
  /**
   * Absolute deadline on the runtime clock (ms), from the inbound deadline header or the
   * service's overall timeout, whichever is sooner; the service passes on the time left.
   */
  readonly deadlineAt: number | undefined
  /** Route or `ambassador` (for metrics and logs). */
  readonly route: string
  /** Inbound request id (`x-request-id`, generated when absent); passed upstream. */
  readonly requestId: string
  /** Aborted when the client goes away. */
  readonly signal: AbortSignal
}

/** A WebSocket handshake to send upstream ({@link ServiceRuntime.tunnel}). */
export interface TunnelRequest {
  /** Origin-form target (path plus raw query). */
  readonly target: string
  /** Lower-case end-to-end headers (hop-by-hop ones removed; the tunnel adds its own). */
  readonly headers: Record<string, string | string[]>
  /** The inbound `Host` (sent when the service does not rewrite it). */
  readonly host: string
  readonly requestId: string
  /** Close the tunnel after this long without a byte either way. */
  readonly idleTimeoutMs: number
  /**
   * Absolute inbound deadline on the service's clock, if the client sent one. It bounds only
   * the wait for a DNS-discovered service's first answer (a tunnel outlives any deadline).
   */
  readonly deadlineAt?: number | undefined
}

/** How a tunnel's handshake was decided. */
export interface TunnelOutcome {
  /** 101 when tunnelled; else the endpoint's answer or the proxy's 499/502/503/504. */
  readonly status: number
  /** Proxy-generated failure code (`UPSTREAM_TIMEOUT`, `BROKEN_CIRCUIT`, ...). */
  readonly error: string | undefined
  /** The endpoint tried, when one was picked. */
  readonly endpoint: string | undefined
  /** Settles when the client connection has closed. */
  readonly ended: Promise<TunnelEnd>
}

/** How a tunnel (or the answer that replaced it) ended. */
export interface TunnelEnd {
  /** `idle`: closed by the idle timeout; `error`: a connection failed; `closed`: ended. */
  readonly reason: 'closed' | 'idle' | 'error'
  /** Bytes read from the client connection, request head included. */
  readonly bytesIn: number
  /** Bytes written to the client connection, response head included. */
  readonly bytesOut: number
}

/** Options of {@link ServiceRuntime.exchange}. */
export interface ExchangeOptions {
  /**
   * A shadow call (or a second primary call to learn noise): it must not change what the real
   * clients of the service get, since the shadow service is often also a target of the route.
   * So it takes no bulkhead slot (the shadow runner caps its own calls), is made once (no retry,
   * no retry budget), is not sent while the breaker is open or half-open (refused as
   * `BROKEN_CIRCUIT`, taking no probe), and its outcome counts neither for the breaker nor for
   * outlier ejection. It still counts in the service's request metrics: the service served it.
   */
  readonly shadow?: boolean | undefined
}

/** How a forwarded exchange ended. */
export interface ForwardOutcome {
  /** Status sent to the client (the upstream's, or the proxy's own 502/503/504). */
  readonly status: number
  /** Attempts made (1 = no retry). */
  readonly attempts: number
  /**
   * Whether any attempt may have reached the upstream: its connection was up and the request
   * was handed to it. False means the upstream cannot have seen the request (refused or timed
   * out connects, breaker, bulkhead, no endpoints, a deadline that passed while connecting).
   */
  readonly written: boolean
  /** Endpoint of the final attempt, when one was picked. */
  readonly endpoint: string | undefined
  /** Proxy-generated failure code (e.g. `BROKEN_CIRCUIT`, `BULKHEAD_FULL`, `UPSTREAM_TIMEOUT`). */
  readonly error: string | undefined
  /** The response as sent, when `capture` was requested (bodies over the cap are truncated). */
  readonly captured: CapturedResponse | undefined
}

/** A buffered response, for shadow comparison and idempotent replay. */
export interface CapturedResponse {
  readonly status: number
  readonly headers: Record<string, string | string[]>
  readonly body: Buffer
  /** True when the body was longer than the capture cap and cut. */
  readonly truncated: boolean
}

/** Options of one forward. */
export interface ForwardOptions {
  /**
   * Also buffer the response as sent (up to this many bytes) and return it in the outcome; 0
   * captures the head with an empty body (truncated when the answer had one).
   */
  readonly captureBytes?: number | undefined
  /**
   * When a request with a non-idempotent method (POST, PATCH, ...) may be retried:
   * - `'with-key'`: like an idempotent one when it carries an `Idempotency-Key` (the app behind
   *   dedupes by the key); without one, as `'unsent-only'`.
   * - `'unsent-only'`: only after a failure that proves nothing was written to the app (the
   *   connect was refused, timed out or failed its TLS handshake before the request was handed
   *   to a connection), key or not; never after a read timeout, a reset once sent, or a
   *   retryable status. For keys enforced by the proxy itself (sidecar idempotency), which the
   *   app knows nothing of.
   * - `'never'`: not retried at all.
   *
   * Idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) are retried as configured
   * whatever this says.
   * @default 'with-key'
   */
  readonly unsafeRetry?: 'with-key' | 'unsent-only' | 'never' | undefined
}

/**
 * The response a service forwards into: node:http's ServerResponse, or the fast path's own
 * response (src/proxy/inbound/fast-response.ts), which has just these members.
 */
export interface ProxyResponse {
  readonly headersSent: boolean
  readonly destroyed: boolean
  readonly writableEnded: boolean
  readonly writableFinished: boolean
  /** The connection (the access log reads `bytesWritten`); null once detached. */
  readonly socket: { readonly bytesWritten: number } | null
  /** The request, when there is an IncomingMessage (not on the fast path). */
  readonly req?: IncomingMessage | undefined
  writeHead(
    statusCode: number,
    statusMessage?: string,
    headers?: OutgoingHttpHeaders | OutgoingHttpHeader[],
  ): unknown
  writeHead(statusCode: number, headers?: OutgoingHttpHeaders | OutgoingHttpHeader[]): unknown
  setHeader(name: string, value: number | string | readonly string[]): unknown
  write(chunk: Buffer | string): boolean
  end(chunk?: Buffer | string): unknown
  destroy(): unknown
  on(event: 'close' | 'drain', listener: () => void): unknown
  once(event: 'close' | 'drain', listener: () => void): unknown
}

/** A live upstream service: endpoints, pools, policies. */
export interface ServiceRuntime {
  readonly name: string
  readonly config: ServiceConfig
  /**
   * Forwards and streams the response into `res` (status, headers without hop-by-hop ones,
   * body). Never throws: failures become a proxy response (502/503/504 with a JSON problem body
   * naming the code) unless `res.headersSent`, in which case the socket is destroyed.
   */
  forward(
    req: ForwardRequest,
    res: ProxyResponse,
    options?: ForwardOptions,
  ): Promise<ForwardOutcome>
  /**
   * Sends without a client response and buffers the result. With `options.shadow`, the call
   * is outside the service's accounting (see {@link ExchangeOptions}).
   */
  exchange(
    req: ForwardRequest,
    maxBytes: number,
    options?: ExchangeOptions,
  ): Promise<CapturedResponse>
  /**
   * Sends a WebSocket handshake to one endpoint and, when it answers 101, joins `client` to
   * that connection (`head`: bytes the client sent after its request head). Resolves once the
   * handshake is decided; never rejects (failures are answered to the client as problems).
   */
  tunnel(req: TunnelRequest, client: Duplex, head: Buffer): Promise<TunnelOutcome>
  /** Snapshot for metrics and the admin API (no secrets). */
  state(): ServiceState
  /** Forces the breaker open until reset. */
  isolate(): void
  /** Closes the breaker and clears ejections. */
  reset(): void
  /** Stops discovery/file watchers and closes pools after in-flight requests finish. */
  close(): Promise<void>
}

/** A service snapshot. */
export interface ServiceState {
  readonly name: string
  readonly breaker: CircuitState | 'disabled'
  readonly bulkhead: { readonly running: number; readonly queued: number; readonly max: number }
  readonly retryBudgetLeft: number | undefined
  readonly endpoints: readonly EndpointState[]
}

/** One endpoint's snapshot. */
export interface EndpointState {
  readonly url: string
  readonly ejectedUntil: number | undefined
  readonly ejections: number
  readonly inFlight: number
  readonly consecutiveFailures: number
}

/** The services of the current config, by name. Swapped as a whole on reload. */
export interface ServiceRegistry {
  get(name: string): ServiceRuntime | undefined
  names(): readonly string[]
}

/** A route's live switch, changed by the admin API without a reload. */
export interface RouteOverride {
  /** Replacement targets (e.g. rollback: `[{ service: 'legacy', weight: 1 }]`). */
  readonly targets: readonly RouteTargetConfig[]
}

/** Route-level state for the admin API and metrics. */
export interface RouteState {
  readonly name: string
  readonly targets: readonly RouteTargetConfig[]
  readonly overridden: boolean
  /** Requests answered per target service. */
  readonly requestsByService: Readonly<Record<string, number>>
  readonly shadow:
    | {
        readonly compared: number
        readonly mismatches: number
        readonly examples: readonly ShadowMismatch[]
        /** Sampled requests not compared (too many shadow calls in flight, a body over the cap). */
        readonly skipped?: number
        /** Shadow (or second primary) calls, or comparisons, that failed. */
        readonly errors?: number
        /** Paths learned as noise. */
        readonly noise?: readonly string[]
      }
    | undefined
  /** Keys pinned now, and requests that followed their key's pin; undefined: affinity off. */
  readonly retryAffinity?:
    | { readonly pinnedKeys: number; readonly repeatsFollowed: number }
    | undefined
}

/** One recorded shadow mismatch. */
export interface ShadowMismatch {
  readonly at: number
  readonly method: string
  readonly target: string
  /** Differences as `path: primary → shadow` strings, noise removed. */
  readonly differences: readonly string[]
}

/** What a listener's request handler needs from the runtime. */
export interface InboundContext extends ProxyDeps {
  readonly services: () => ServiceRegistry
  readonly deadlineHeader: string
  /** The proxy's Via pseudonym (see {@link ProxyConfig.via}); undefined: no Via is added. */
  readonly via?: string | undefined
  readonly accessLog: boolean
}

/**
 * A node:http request listener, optionally with a fast-path entry (`fast`) that serves plain
 * HTTP/1.1 requests read by the listener itself (see src/proxy/inbound/fast-connection.ts).
 */
export type RequestHandler = ((req: IncomingMessage, res: ServerResponse) => void) & {
  readonly fast?: FastRequestHandler | undefined
  /** Takes `Upgrade` requests (node:http's 'upgrade' event); undefined: they are refused. */
  readonly upgrade?: UpgradeHandler | undefined
  /**
   * Told of a request the listener refused before the handler saw it (node's parser, its
   * header and request timers, CONNECT, an `Upgrade` during the drain), to count and log it
   * as the handler's own refusals are.
   */
  readonly refused?: ListenerRefusalHandler | undefined
}

/** A refusal the listener answered itself: see {@link RequestHandler.refused}. */
export type ListenerRefusalHandler = (refusal: {
  readonly status: number
  readonly code: string
  readonly detail: string
  /** The client's address, when the socket still knows it. */
  readonly remote: string | undefined
}) => void

/** Serves one `Upgrade` request: node:http gave up the socket, `head` is what followed it. */
export type UpgradeHandler = (req: IncomingMessage, socket: Duplex, head: Buffer) => void
