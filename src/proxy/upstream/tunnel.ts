// WebSocket tunnels: the upstream half of an `Upgrade: websocket` request a gateway route
// accepted. The handshake goes to one endpoint of the service under the service's policies, and
// once the endpoint answers 101 the proxy stops speaking HTTP on both connections and copies
// bytes both ways until either side ends.
//
// Decisions:
// - One attempt, never retried: a handshake the endpoint may have received is not sent again,
//   and WebSocket clients reconnect by themselves.
// - The breaker admits the handshake and counts its outcome (a connect error, a reset, a
//   timeout or a 5xx status in `retry.retryOnStatus`, 502/503/504 without `retry`, is a
//   failure; 101 or any other answer, 408 and 429 included, is a success), as does outlier
//   ejection. What happens later inside the tunnel is not counted:
//   the breaker judges whether the service answers, not how long its conversations last.
// - Timeouts: `timeouts.connectMs` to connect (TLS included), then `timeouts.readMs` for the
//   answer, both on the service's clock. `overallMs` and the deadline header do not apply: a
//   tunnel lives as long as its conversation.
// - The wait for a DNS-discovered service's first answer is part of connecting: it counts
//   against `connectMs` (and ends at the inbound deadline when that is sooner), and runs out
//   as the HTTP path's does, 504 DEADLINE_EXCEEDED. A client that leaves ends it (499).
// - The bulkhead does not count tunnels: one long-lived WebSocket would hold a slot for hours
//   and starve short requests. The listener's `maxConnections` bounds them.
// - An answer other than 101 (401, 404, 503, ...) is read whole (at most 1 MiB, `readMs`
//   between chunks) and passed to the client with its length and `Connection: close`
//   (hop-by-hop headers removed); one cut short or too large becomes the proxy's 502/504, never
//   a shorter body that looks complete. The 101 keeps its headers except the endpoint's
//   connection-specific ones (other than Connection and Upgrade).
// - The tunnel ends when either side fails, when no byte has passed either way for the route's
//   `idleTimeoutMs`, when the listener drains, or when its service closes (a reload changed or
//   removed it). When one side closes, the other is ended (its queued bytes, a close frame,
//   still go out); from the first side's end (its FIN) or close, both are cut if the tunnel
//   has not closed within 5 s.

import { type ClientRequest, request as httpRequest, type IncomingMessage } from 'node:http'
import { request as httpsRequest } from 'node:https'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { Clock, TimerHandle } from '../../core/clock.js'
import type { ErrorCode } from '../../core/error-codes.js'
import type { ServiceConfig, TunnelEnd, TunnelOutcome, TunnelRequest } from '../contracts.js'
import { connectionNamedHeaders, HOP_BY_HOP_HEADERS, isHopByHop } from '../hop-by-hop.js'
import { endGracefully, endWithProblem } from '../inbound/raw-response.js'
import { appendVia } from '../via.js'
import type { ServiceBreaker } from './breaker.js'
import type { OutboundAuth, TlsMaterial } from './credentials.js'
import type { Endpoint, EndpointSet } from './endpoints.js'
import { localShortage, type ShortageLog } from './local-shortage.js'
import { problemDetail, statusFor } from './problems.js'

/** What a tunnel needs of its service: the service runtime's shared state. */
export interface TunnelService {
  readonly name: string
  readonly config: ServiceConfig
  readonly clock: Clock
  readonly endpoints: EndpointSet
  readonly breaker: ServiceBreaker
  readonly auth: OutboundAuth | undefined
  readonly tls: TlsMaterial | undefined
  readonly connectMs: number
  readonly readMs: number
  /** failureStatus[status] = 1 for answers counted as failures (breakerFailureStatuses). */
  readonly failureStatus: Uint8Array
  readonly deadlineHeader: string
  /** The proxy's Via pseudonym, appended to the answers passed back; undefined: none. */
  readonly via: string | undefined
  readonly closed: boolean
  /** Pending until discovery's first answer. */
  readonly discovering: Promise<void> | undefined
  /** Stops of the handshakes and tunnels under way; the service calls them when it closes. */
  readonly tunnels: Set<() => void>
  /** Where connects that failed for want of the proxy's own resources are logged. */
  readonly shortages: ShortageLog
  /** Counts an answer in the service's request metrics. */
  count(status: number, startedAt: number): void
}

// How long the second side of a tunnel may take to close once the first has.
const closeGraceMs = 5_000

// The largest answer (other than 101) passed on to a client; a bigger one is a failed answer.
const maxAnswerBytes = 1_048_576

// Request headers the tunnel sets itself.
const setByTunnel: ReadonlySet<string> = new Set(['host', 'content-length', 'x-request-id'])

/**
 * Sends the handshake of `request` to an endpoint of `service` and, on 101, joins `client` to
 * the endpoint's connection (`head`: bytes the client sent after its request head). Resolves
 * once the handshake is decided; `outcome.ended` settles when both connections are closed.
 * Never rejects: a failure is answered to the client as a problem (502/503/504).
 */
export function openTunnel(
  service: TunnelService,
  request: TunnelRequest,
  client: Duplex,
  head: Buffer,
): Promise<TunnelOutcome> {
  return new Handshake(service, request, client, head).start()
}

class Handshake {
  readonly service: TunnelService
  readonly request: TunnelRequest
  readonly client: Duplex
  readonly head: Buffer
  readonly startedAt: number
  resolve!: (outcome: TunnelOutcome) => void
  endpoint: Endpoint | undefined
  epoch = -1
  upstream: ClientRequest | undefined
  /** The endpoint's connection once it switched protocols. */
  upstreamSocket: Socket | undefined
  timer: TimerHandle | undefined
  connected = false
  timedOut = false
  decided = false
  readonly onClientGone = (): void => this.clientGone()
  /** Ends this handshake or tunnel at once (the service is closing). */
  readonly stop = (): void => {
    this.upstream?.destroy()
    this.upstreamSocket?.destroy()
    this.client.destroy()
  }

  constructor(service: TunnelService, request: TunnelRequest, client: Duplex, head: Buffer) {
    this.service = service
    this.request = request
    this.client = client
    this.head = head
    this.startedAt = service.clock.now()
  }

  start(): Promise<TunnelOutcome> {
    const promise = new Promise<TunnelOutcome>((resolve) => {
      this.resolve = resolve
    })
    const service = this.service
    if (this.client.destroyed) {
      this.settle(499, 'ABORTED', closedNow())
      return promise
    }
    const discovering = service.discovering
    if (service.endpoints.all.length === 0 && discovering !== undefined && !service.closed)
      this.awaitDiscovery(discovering)
    else this.pick()
    return promise
  }

  /**
   * The first DNS answer is not in yet: wait for it as part of connecting, at most `connectMs`
   * from the handshake's start and not past the inbound deadline (a resolver that does not
   * answer gives up only after tens of seconds), and while the client stays.
   */
  awaitDiscovery(discovering: Promise<void>): void {
    const service = this.service
    const deadlineAt = this.request.deadlineAt
    const waitMs = Math.min(
      service.connectMs,
      deadlineAt === undefined ? Number.POSITIVE_INFINITY : deadlineAt - this.startedAt,
    )
    if (waitMs <= 0) {
      this.refuse('DEADLINE_EXCEEDED')
      return
    }
    // A client that ends its side before anything was sent for it has left, as on the HTTP
    // path: its connection is closed (the listener keeps half-open connections open).
    const client = this.client
    const leave = (): void => {
      client.destroy()
    }
    client.once('close', this.onClientGone)
    client.once('end', leave)
    const stopWaiting = (): void => {
      if (this.timer !== undefined) service.clock.clearTimeout(this.timer)
      this.timer = undefined
      client.off('close', this.onClientGone)
      client.off('end', leave)
    }
    service.tunnels.add(this.stop)
    this.timer = service.clock.setTimeout(() => {
      this.timer = undefined
      if (this.decided) return
      stopWaiting()
      this.refuse('DEADLINE_EXCEEDED')
    }, waitMs)
    void discovering.then(() => {
      if (this.decided) return
      stopWaiting()
      service.tunnels.delete(this.stop)
      this.pick()
    })
  }

  /** Picks an endpoint the breaker admits and sends the handshake there. */
  pick(): void {
    const service = this.service
    if (this.client.destroyed) {
      this.settle(499, 'ABORTED', closedNow())
      return
    }
    const endpoint = service.closed ? undefined : service.endpoints.pick()
    if (endpoint === undefined) {
      this.refuse('UPSTREAM_NO_ENDPOINTS')
      return
    }
    const epoch = service.breaker.admit()
    if (epoch < 0) {
      this.refuse(service.breaker.state === 'isolated' ? 'ISOLATED_CIRCUIT' : 'BROKEN_CIRCUIT')
      return
    }
    this.endpoint = endpoint
    this.epoch = epoch
    endpoint.inFlight++
    // Only 'close': a client that half-closes after its handshake may still read the answer.
    this.client.once('close', this.onClientGone)
    service.tunnels.add(this.stop)
    this.connect(endpoint)
  }

  connect(endpoint: Endpoint): void {
    const service = this.service
    const request = this.request
    const headers: Record<string, string | string[]> = {}
    const auth = service.auth
    for (const name in request.headers) {
      if (setByTunnel.has(name) || HOP_BY_HOP_HEADERS.has(name)) continue
      if (name === service.deadlineHeader || (auth !== undefined && name === auth.header)) continue
      headers[name] = request.headers[name] as string | string[]
    }
    headers.host = service.config.rewriteHost ? endpoint.hostHeader : request.host
    headers['x-request-id'] = request.requestId
    if (auth?.value !== undefined) headers[auth.header] = auth.value
    headers.connection = 'Upgrade'
    headers.upgrade = 'websocket'
    const url = new URL(endpoint.url)
    const options = {
      // URL keeps an IPv6 literal's brackets; the socket wants the address alone.
      host: url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname,
      port: url.port === '' ? (endpoint.https ? 443 : 80) : Number(url.port),
      method: 'GET',
      path: request.target,
      headers,
      setHost: false,
      agent: false,
    }
    let upstream: ClientRequest
    try {
      upstream = endpoint.https
        ? httpsRequest({
            ...options,
            ...(service.tls?.connectOptions(endpoint.servername) ??
              (endpoint.servername === undefined ? {} : { servername: endpoint.servername })),
          })
        : httpRequest(options)
    } catch {
      // Options node refuses outright (a bad header value): nothing was sent, so this says
      // nothing of the endpoint's health and is counted by neither the breaker nor ejection,
      // as a request the HTTP path's pool refuses (a failure here opened a healthy circuit).
      this.record(undefined)
      this.client.off('close', this.onClientGone)
      this.refuse('UPSTREAM_POOL_REFUSED')
      return
    }
    this.upstream = upstream
    // connectMs counts from the handshake's start: a wait for the first DNS answer used part.
    this.arm(Math.max(0, this.startedAt + service.connectMs - service.clock.now()))
    upstream.once('socket', (socket: Socket) => {
      socket.setNoDelay(true)
      socket.once(endpoint.https ? 'secureConnect' : 'connect', () => {
        if (this.decided) return
        this.connected = true
        this.arm(service.readMs)
      })
    })
    upstream.once('upgrade', (res: IncomingMessage, socket: Socket, upstreamHead: Buffer) =>
      this.upgraded(res, socket, upstreamHead),
    )
    upstream.once('response', (res: IncomingMessage) => this.answered(res))
    upstream.on('error', (error: Error) => {
      if (this.decided) return
      const shortage = this.connected || this.timedOut ? undefined : localShortage(error)
      if (shortage !== undefined) {
        // The proxy could not create the socket (out of descriptors or memory): its own
        // trouble, counted by neither the breaker nor ejection, as on the HTTP path.
        service.shortages.note(service.name, endpoint.url, error)
        this.record(undefined)
        this.client.off('close', this.onClientGone)
        this.refuse('UPSTREAM_POOL_REFUSED', shortage)
        return
      }
      this.fail(
        this.timedOut
          ? 'UPSTREAM_TIMEOUT'
          : this.connected
            ? 'UPSTREAM_RESET'
            : 'UPSTREAM_CONNECT_FAILED',
      )
    })
    upstream.end()
  }

  /** (Re)arms the handshake's timer: connect, then the answer's head, then each body gap. */
  arm(ms: number): void {
    const clock = this.service.clock
    if (this.timer !== undefined) clock.clearTimeout(this.timer)
    this.timer = clock.setTimeout(() => {
      this.timer = undefined
      if (this.decided) return
      this.timedOut = true
      this.fail('UPSTREAM_TIMEOUT')
    }, ms)
  }

  /** The endpoint switched protocols: join the two connections. */
  upgraded(res: IncomingMessage, upstream: Socket, upstreamHead: Buffer): void {
    if (this.decided) {
      upstream.destroy()
      return
    }
    this.record(false)
    const client = this.client
    client.off('close', this.onClientGone)
    if (client.destroyed) {
      upstream.destroy()
      this.settle(499, 'ABORTED', closedNow())
      return
    }
    this.upstreamSocket = upstream
    // The endpoint's own connection headers stay on its side, except the two that say what
    // the connection switched to.
    const named = connectionNamedHeaders(res.headers.connection)
    const text = headText(
      `HTTP/1.1 101 ${res.statusMessage || 'Switching Protocols'}`,
      res.rawHeaders,
      (name) => name !== 'connection' && name !== 'upgrade' && isHopByHop(name, named),
      this.service.via,
    )
    client.write(`${text}\r\n`)
    if (upstreamHead.length > 0) client.write(upstreamHead)
    if (this.head.length > 0) upstream.write(this.head)
    const ended = join(client, upstream, this.service.clock, this.request.idleTimeoutMs)
    this.settle(101, undefined, ended)
  }

  /**
   * The endpoint answered without switching: read its answer whole (bounded in size, `readMs`
   * between chunks), then give it to the client with its length and end the connection. An
   * answer cut short becomes the proxy's 502/504, never a shorter body that looks whole.
   */
  answered(res: IncomingMessage): void {
    if (this.decided) {
      res.destroy()
      return
    }
    const status = res.statusCode ?? 502
    this.record(this.service.failureStatus[status] === 1)
    const chunks: Buffer[] = []
    let size = 0
    this.arm(this.service.readMs)
    res.on('data', (chunk: Buffer) => {
      if (this.decided) return
      size += chunk.length
      if (size > maxAnswerBytes) {
        this.fail('UPSTREAM_RESET')
        return
      }
      chunks.push(chunk)
      this.arm(this.service.readMs)
    })
    res.on('error', () => {
      if (!this.decided) this.fail(this.timedOut ? 'UPSTREAM_TIMEOUT' : 'UPSTREAM_RESET')
    })
    res.on('end', () => {
      if (this.decided) return
      const named = connectionNamedHeaders(res.headers.connection)
      let text = headText(
        `HTTP/1.1 ${status} ${res.statusMessage ?? ''}`,
        res.rawHeaders,
        (name) => isHopByHop(name, named) || name === 'content-length',
        this.service.via,
      )
      text += `content-length: ${size}\r\nconnection: close\r\n\r\n`
      this.client.off('close', this.onClientGone)
      endGracefully(
        this.client,
        this.service.clock,
        Buffer.concat([Buffer.from(text, 'latin1'), ...chunks]),
      )
      this.settle(status, undefined, closedWith(this.client))
    })
  }

  fail(code: ErrorCode): void {
    if (this.decided) return
    this.record(true)
    this.upstream?.destroy()
    this.client.off('close', this.onClientGone)
    this.refuse(code)
  }

  /** Answers the client with the proxy's own problem for `code` (`reason`: see problemDetail). */
  refuse(code: ErrorCode, reason?: string): void {
    const service = this.service
    const status = statusFor[code] ?? 502
    const headers: Record<string, string> = {}
    if (code === 'BROKEN_CIRCUIT')
      headers['retry-after'] = String(service.breaker.retryAfterSeconds())
    endWithProblem(
      this.client,
      service.clock,
      status,
      code,
      problemDetail(code, service.name, reason),
      {
        headers,
        fields: { service: service.name },
      },
    )
    this.settle(status, code, closedWith(this.client))
  }

  clientGone(): void {
    if (this.decided) return
    // Neither a success nor a failure of the service.
    this.record(undefined)
    this.upstream?.destroy()
    this.settle(499, 'ABORTED', closedNow())
  }

  /** Reports the handshake's outcome to the breaker and outlier ejection, once. */
  record(failed: boolean | undefined): void {
    const endpoint = this.endpoint
    if (endpoint === undefined || this.epoch < 0) return
    endpoint.inFlight--
    const service = this.service
    const epoch = this.epoch
    this.epoch = -1
    // A closed service's endpoints are disposed: no ejection may start on them.
    if (service.closed) return
    service.breaker.record(epoch, failed)
    if (failed === true) service.endpoints.failure(endpoint)
    else if (failed === false) service.endpoints.success(endpoint)
  }

  settle(status: number, error: string | undefined, ended: Promise<TunnelEnd>): void {
    if (this.decided) return
    this.decided = true
    const service = this.service
    if (this.timer !== undefined) {
      service.clock.clearTimeout(this.timer)
      this.timer = undefined
    }
    // Refusals before an endpoint was picked (open breaker, no endpoints, deadline) count too,
    // as the HTTP path counts them: an open breaker must show in the service's metrics.
    if (status !== 499) service.count(status, this.startedAt)
    const stop = this.stop
    void ended.then(() => service.tunnels.delete(stop))
    this.resolve({ status, error, endpoint: this.endpoint?.url, ended })
  }
}

/**
 * A response head as text: `statusLine`, then each of the endpoint's raw headers as it sent
 * them, except those `skip` (given the lower-case name) leaves out. With a `via` pseudonym, the
 * endpoint's Via lines `skip` keeps become one, with the proxy's entry after them. No closing
 * blank line.
 */
function headText(
  statusLine: string,
  raw: readonly string[],
  skip: (name: string) => boolean,
  via: string | undefined,
): string {
  let text = `${statusLine}\r\n`
  let upstreamVia: string[] | undefined
  for (let i = 0; i < raw.length; i += 2) {
    const name = (raw[i] as string).toLowerCase()
    // Skipped first: Via lines the endpoint named in Connection are hop-by-hop like any other
    // named header, and are dropped before the proxy adds its entry (as on plain responses).
    if (skip(name)) continue
    if (via !== undefined && name === 'via') {
      upstreamVia ??= []
      upstreamVia.push(raw[i + 1] as string)
      continue
    }
    text += `${raw[i]}: ${raw[i + 1]}\r\n`
  }
  if (via !== undefined) text += `via: ${appendVia(upstreamVia, '1.1', via)}\r\n`
  return text
}

function bytesRead(socket: Duplex): number {
  return (socket as Partial<Socket>).bytesRead ?? 0
}

function bytesWritten(socket: Duplex): number {
  return (socket as Partial<Socket>).bytesWritten ?? 0
}

function closedNow(): Promise<TunnelEnd> {
  return Promise.resolve({ reason: 'closed', bytesIn: 0, bytesOut: 0 })
}

function closedWith(client: Duplex): Promise<TunnelEnd> {
  return new Promise<TunnelEnd>((resolve) => {
    const done = (): void =>
      resolve({ reason: 'closed', bytesIn: bytesRead(client), bytesOut: bytesWritten(client) })
    if (client.destroyed) done()
    else client.once('close', done)
  })
}

/**
 * Copies bytes both ways between `client` and `upstream` (each side's end is passed on, so a
 * half-close reaches the other side), ends both when either fails or closes, or when nothing
 * has passed for `idleTimeoutMs` on `clock`; cuts both when they have not closed 5 s after the
 * first side ended or closed. Settles when both are closed.
 */
function join(
  client: Duplex,
  upstream: Socket,
  clock: Clock,
  idleTimeoutMs: number,
): Promise<TunnelEnd> {
  let lastActive = clock.now()
  let reason: TunnelEnd['reason'] | undefined
  let timer: TimerHandle | undefined
  const touch = (): void => {
    lastActive = clock.now()
  }
  const stop = (why: TunnelEnd['reason']): void => {
    reason ??= why
    if (timer !== undefined) {
      clock.clearTimeout(timer)
      timer = undefined
    }
    client.destroy()
    upstream.destroy()
  }
  // The timer fires at most once per idle period; traffic in between only moves lastActive.
  const check = (): void => {
    timer = undefined
    const idleFor = clock.now() - lastActive
    if (idleFor >= idleTimeoutMs) stop('idle')
    else timer = clock.setTimeout(check, idleTimeoutMs - idleFor)
  }
  timer = clock.setTimeout(check, idleTimeoutMs)
  client.on('data', touch)
  upstream.on('data', touch)
  // 'close' follows an error; the other side is ended there.
  client.on('error', () => stop('error'))
  upstream.on('error', () => stop('error'))
  client.pipe(upstream)
  upstream.pipe(client)
  // From the first side's end (its FIN, which the pipe passes on as a half-close) or close,
  // the tunnel has closeGraceMs to finish closing, then is cut. A peer that never closes after
  // the FIN it was passed (a client that left, an upstream that ignores half-closes) would
  // otherwise hold the tunnel, and its upstream connection, until idleTimeoutMs.
  let grace = false
  const startGrace = (): void => {
    if (grace) return
    grace = true
    if (timer !== undefined) clock.clearTimeout(timer)
    timer = clock.setTimeout(() => {
      timer = undefined
      stop(reason ?? 'closed')
    }, closeGraceMs)
  }
  client.once('end', startGrace)
  upstream.once('end', startGrace)
  let open = 2
  return new Promise<TunnelEnd>((resolve) => {
    const closed = (): void => {
      if (--open === 1) {
        // One side is gone: the other is ended, not destroyed, so what is still queued for it
        // (a close frame) goes out first, and destroyed if it has not closed within a grace.
        if (!client.destroyed) client.end()
        if (!upstream.destroyed) upstream.end()
        startGrace()
        return
      }
      if (timer !== undefined) {
        clock.clearTimeout(timer)
        timer = undefined
      }
      resolve({
        reason: reason ?? 'closed',
        bytesIn: bytesRead(client),
        bytesOut: bytesWritten(client),
      })
    }
    client.once('close', closed)
    upstream.once('close', closed)
  })
}
