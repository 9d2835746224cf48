// One listening socket of the proxy: a node:http or node:https server with the listener's
// limits, TLS termination whose certificate is reloaded when its files change, and a graceful
// drain. Request validation itself lives in request.ts; this module sets up what only the
// server can do (parser strictness, sizes, timeouts, connection cap) and answers CONNECT.

import { readFileSync } from 'node:fs'
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import type { Socket } from 'node:net'
import { resolve } from 'node:path'
import type { Duplex } from 'node:stream'
import { createSecureContext, type SecureContextOptions } from 'node:tls'
import type { TimerHandle } from '../../core/clock.js'
import { InvalidOptionError } from '../../core/errors.js'
import { checkInteger, checkObject } from '../../core/validate.js'
import type { ListenerConfig, ProxyDeps, RequestHandler } from '../contracts.js'
import { markCutByDrain } from '../drain-cut.js'
import { RateLimitedLog } from '../rate-limited-log.js'
import { type FileWatch, watchFileContent } from '../upstream/file-watch.js'
import { FastConnection } from './fast-connection.js'
import { markAnsweredByListener } from './listener-answer.js'
import { endWithProblem, rawProblem } from './raw-response.js'
import { awaitContinue, isConnectionClosing, refuseExpectation } from './request.js'

/** Options of {@link createListenerServer}. */
export interface ListenerServerOptions {
  /**
   * Quiet time after the last change to a TLS file before it is reloaded, so a certificate
   * and key written one after the other are read together (ms).
   * @default 200
   */
  readonly tlsReloadDebounceMs?: number | undefined
}

/** The bound address of a listener. */
export interface ListenerAddress {
  readonly host: string
  readonly port: number
}

/** A listening proxy server; see {@link createListenerServer}. */
export interface ListenerServer {
  /** The listener's name from the config. */
  readonly name: string
  /** The underlying node:http / node:https server (for tests and the runtime's own hooks). */
  readonly server: Server
  /** Open client connections now. */
  readonly connections: number
  /** Connections refused since start because `limits.maxConnections` were open. */
  readonly refusedConnections: number
  /** Binds `listener.host:listener.port` (port 0: any free port) and resolves the address. */
  listen(): Promise<ListenerAddress>
  /** The bound address, undefined before listen() or after close(). */
  address(): ListenerAddress | undefined
  /**
   * Re-reads the TLS files now and swaps the certificate for new connections; keeps the old
   * one (and logs) when the new files do not load. False when nothing was swapped.
   */
  reloadTls(): boolean
  /**
   * Graceful drain: stops accepting, closes idle keep-alive connections, lets requests in
   * flight finish (their connections close after the response) for up to `drainMs`, then
   * destroys whatever is still open. Resolves when every connection is closed. A call while
   * closing returns the same promise, and cuts the connections no later than its own `drainMs`.
   */
  close(drainMs?: number): Promise<void>
  /** Requests still under way when close()'s `drainMs` ran out, which it cut (0 until then). */
  readonly cutRequests: number
  /** WebSocket tunnels close() ended when it began (they never drain on their own). */
  readonly closedTunnels: number
}

function ignoreSocketError(): void {}

/**
 * How often node:http should check a server's headers and request timeouts: a quarter of the
 * shorter one, from 25 ms to 1 s. Node checks them on this interval (30 s by default), which
 * would let a slowloris client hold a socket far past a short headersTimeout (the admin API's
 * server uses it too, so both ports answer a half-sent head with 408 as promptly).
 */
export function connectionsCheckingIntervalMs(
  headersTimeoutMs: number,
  requestTimeoutMs: number,
): number {
  return Math.max(25, Math.min(1_000, Math.floor(Math.min(headersTimeoutMs, requestTimeoutMs) / 4)))
}

/** The problem answering an error node:http raised for a connection ('clientError'). */
function clientErrorAnswer(
  code: string | undefined,
  maxHeaderBytes: number,
): readonly [status: number, code: string, detail: string] {
  switch (code) {
    case 'HPE_HEADER_OVERFLOW':
      return [
        431,
        'REQUEST_HEADERS_TOO_MANY',
        `request header section larger than ${maxHeaderBytes} bytes`,
      ]
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
      return [413, 'REQUEST_BODY_TOO_LARGE', 'chunk extensions too large']
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return [408, 'TIMEOUT', 'the request did not arrive within the listener time limits']
    default:
      return [400, 'REQUEST_INVALID', 'malformed HTTP/1.1 request']
  }
}

/**
 * Creates the server for one listener. The HTTP parser is always the strict one
 * (`insecureHTTPParser: false`), so conflicting Content-Length / Transfer-Encoding, duplicate
 * Content-Length, obs-fold, bare LF and bad chunk sizes are refused by Node before `handler`
 * runs; those refusals, and node's header and request timeouts, are answered as problems (400
 * `REQUEST_INVALID`, 431 `REQUEST_HEADERS_TOO_MANY`, 408 `TIMEOUT`) and close the connection.
 * Limits: `maxHeaderSize` = `limits.maxHeaderBytes` (431),
 * `maxHeadersCount` one above `limits.maxHeaders` (so request.ts sees the excess and answers
 * 431), headers / request / keep-alive timeouts (the headers timeout also bounds a TLS
 * handshake), and `maxConnections` (further connections are
 * closed at once, without a response). CONNECT is answered 405 and the connection closed.
 * `Upgrade` requests go to `handler.upgrade` (a gateway's WebSocket handshakes, websocket.ts)
 * and are refused with 400 on a handler without one; a drain ends upgraded connections at once.
 *
 * With `listener.tls` it terminates TLS: the certificate and key (and client CA, which makes
 * client certificates required) are read now, and again whenever one of the files changes
 * (the folders are watched, so files replaced by rename are seen too, as are Kubernetes secret
 * volume updates, see {@link isWatchedFileEvent}); a new pair that does not load (bad PEM, key
 * not matching) is logged and the previous certificate stays in use.
 *
 * @example
 * ```ts
 * const server = createListenerServer(listener, createAmbassadorHandler(listener, ctx), deps)
 * const { port } = await server.listen()
 * // ... on SIGTERM:
 * await server.close(10_000)
 * ```
 */
export function createListenerServer(
  listener: ListenerConfig,
  handler: RequestHandler,
  deps: ProxyDeps,
  options: ListenerServerOptions = {},
): ListenerServer {
  checkObject('listener', listener)
  checkObject('options', options)
  const prefix = `listeners.${listener.name}.limits`
  const limits = checkObject(prefix, listener.limits)
  const maxHeaderBytes = checkInteger(`${prefix}.maxHeaderBytes`, limits.maxHeaderBytes, 1024)
  const maxHeaders = checkInteger(`${prefix}.maxHeaders`, limits.maxHeaders, 1, 100_000)
  const maxBodyBytes = checkInteger(`${prefix}.maxBodyBytes`, limits.maxBodyBytes, 0)
  const headersTimeoutMs = checkInteger(`${prefix}.headersTimeoutMs`, limits.headersTimeoutMs, 1)
  const requestTimeoutMs = checkInteger(`${prefix}.requestTimeoutMs`, limits.requestTimeoutMs, 1)
  if (headersTimeoutMs > requestTimeoutMs) {
    throw new InvalidOptionError(
      `${prefix}.headersTimeoutMs`,
      `at most requestTimeoutMs (${requestTimeoutMs})`,
      headersTimeoutMs,
    )
  }
  const keepAliveTimeoutMs = checkInteger(
    `${prefix}.keepAliveTimeoutMs`,
    limits.keepAliveTimeoutMs,
    1,
  )
  const maxConnections = checkInteger(`${prefix}.maxConnections`, limits.maxConnections, 1)
  const debounceMs =
    options.tlsReloadDebounceMs === undefined
      ? 200
      : checkInteger('options.tlsReloadDebounceMs', options.tlsReloadDebounceMs, 0)

  const serverOptions = {
    insecureHTTPParser: false,
    maxHeaderSize: maxHeaderBytes,
    // request.ts refuses an HTTP/1.1 request without Host itself (400 REQUEST_HOST_INVALID, as
    // a problem); node's own check would answer first, with a bare 400 and no code.
    requireHostHeader: false,
    joinDuplicateHeaders: false,
    headersTimeout: headersTimeoutMs,
    requestTimeout: requestTimeoutMs,
    keepAliveTimeout: keepAliveTimeoutMs,
    connectionsCheckingInterval: connectionsCheckingIntervalMs(headersTimeoutMs, requestTimeoutMs),
    noDelay: true,
  }

  const log = deps.logger.child({ listener: listener.name })
  const tls = listener.tls
  const readTls = (): SecureContextOptions => {
    if (tls === undefined) return {}
    return {
      cert: readFileSync(tls.certFile),
      key: readFileSync(tls.keyFile),
      ...(tls.clientCaFile === undefined ? {} : { ca: readFileSync(tls.clientCaFile) }),
    }
  }

  let server: Server
  if (tls === undefined) {
    server = createHttpServer(serverOptions)
  } else {
    let secure: SecureContextOptions
    try {
      secure = readTls()
      createSecureContext(secure)
    } catch (error) {
      throw new InvalidOptionError(
        `listeners.${listener.name}.tls`,
        `a readable certificate and matching key (${(error as Error).message})`,
        tls.certFile,
      )
    }
    server = createHttpsServer({
      ...serverOptions,
      // headersTimeout only starts once the handshake is done; without this a connection that
      // never finishes its ClientHello holds a slot for tls.Server's default 120 s.
      handshakeTimeout: headersTimeoutMs,
      ...secure,
      requestCert: tls.clientCaFile !== undefined,
      rejectUnauthorized: tls.clientCaFile !== undefined,
    }) as unknown as Server
  }
  server.maxHeadersCount = maxHeaders + 1
  server.maxConnections = maxConnections

  const sockets = new Set<Socket>()
  // Responses per connection (the TLS socket for https), in the order of their requests: the
  // first is under way, the others are pipelined requests waiting for it (see the 'request'
  // listener). Tells idle connections from busy ones when draining and marks the unsent
  // responses `Connection: close`. An array per
  // connection, not one Set of every response: a Set that adds and deletes a fresh object per
  // request made every scavenge about 5x slower under load (4 ms instead of 0.8, some 6 us of
  // CPU per request).
  const busy = new Map<Socket, ServerResponse[]>()
  const track = (socket: Socket): void => {
    busy.set(socket, [])
    socket.once('close', () => busy.delete(socket))
  }
  let refused = 0
  let draining = false
  let bound: ListenerAddress | undefined

  // The fast path (plain HTTP with a handler that has one): the listener reads requests off
  // the socket itself (fast-connection.ts) and gives the connection to node:http's own
  // connection listener, taken off the server here, at the first request outside the fast
  // path's subset.
  const fastConnections = new Set<FastConnection>()
  // close() resolves once the server has closed and the last socket's 'close' has run: the
  // server's own callback can come first (it counts a socket gone when it is destroyed).
  let allClosed: (() => void) | undefined
  const forget = (socket: Socket): void => {
    sockets.delete(socket)
    if (sockets.size === 0) allClosed?.()
  }
  const nativeListeners =
    tls === undefined && 'fast' in handler
      ? (server.listeners('connection') as ((socket: Socket) => void)[])
      : undefined
  if (nativeListeners !== undefined) {
    server.removeAllListeners('connection')
    const options = {
      limits: { maxHeaderBytes, maxHeaders, maxBodyBytes, keepAliveTimeoutMs },
      handler: () => handler.fast,
      handOver: (socket: Socket): void => {
        track(socket)
        for (const native of nativeListeners) native.call(server, socket)
      },
      draining: () => draining,
      onEnd: (connection: FastConnection): void => {
        fastConnections.delete(connection)
      },
    }
    server.on('connection', (socket: Socket) => {
      sockets.add(socket)
      socket.once('close', () => forget(socket))
      // Read per connection: a runtime's handler has a fast path only while its current
      // generation's listener does.
      if (handler.fast === undefined) options.handOver(socket)
      else fastConnections.add(new FastConnection(socket, options))
    })
  } else {
    server.on('connection', (socket: Socket) => {
      sockets.add(socket)
      socket.once('close', () => forget(socket))
      if (tls === undefined) track(socket)
    })
  }
  server.on('secureConnection', track)
  server.on('drop', () => {
    refused++
  })
  // An accept that fails for want of file descriptors (EMFILE or ENFILE, as a connection flood
  // can make it) is handled inside libuv: it frees a descriptor it keeps in reserve, accepts
  // the waiting connections and closes them, and Node emits nothing, so those are not logged
  // (docs/proxy.md, File descriptors). Only when that reserve is gone too, or for another
  // accept error, does the server emit 'error', which Node throws when nobody listens: the
  // proxy would end. The server keeps listening; such errors are logged at most every 10 s,
  // with how many were not. Errors before listening are listen()'s to report.
  const acceptFailures = new RateLimitedLog(deps.clock, (fields) =>
    log.error('accepting a connection failed', fields),
  )
  server.on('error', (error: NodeJS.ErrnoException) => {
    if (bound === undefined) return
    acceptFailures.log({ code: error.code, error: error.message })
  })
  // What the listener answers itself, with no handler call: counted and logged by the handler
  // in force as node's refusals are (RequestHandler.refused), so no answer goes uncounted.
  const refuseHere = (
    socket: Duplex,
    status: number,
    code: string,
    detail: string,
    headers?: Record<string, string>,
  ): void => {
    const remote = (socket as Duplex & { remoteAddress?: string }).remoteAddress
    endWithProblem(socket, deps.clock, status, code, detail, headers && { headers })
    handler.refused?.({ status, code, detail, remote })
  }
  server.on('connect', (_req, socket: Socket) => {
    refuseHere(socket, 405, 'REQUEST_METHOD_NOT_ALLOWED', 'CONNECT is not supported', {
      allow: 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS',
    })
  })
  // Upgrade requests (node:http gives them up with their socket): a handler with `upgrade`
  // (a gateway) takes them; any other refuses them as request.ts would. Upgraded connections
  // are not HTTP connections any more: a drain closes them at once (their clients reconnect,
  // to another instance) instead of waiting for a response that never comes, or for a
  // client that never closes its side.
  const upgraded = new Set<Duplex>()
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    // node:http took its own listeners off: a reset client must not become an uncaught
    // error. 'close' follows, and whoever holds the socket acts on that.
    socket.on('error', ignoreSocketError)
    const upgrade = handler.upgrade
    if ((busy.get(req.socket)?.length ?? 0) > 0) {
      // Pipelined behind a response still under way, which node would go on writing into the
      // upgraded connection: neither can be answered in order, so the connection goes.
      log.warn('upgrade pipelined behind an unfinished response; connection closed', {
        remote: req.socket.remoteAddress,
      })
      socket.destroy()
      return
    }
    busy.delete(req.socket)
    if (draining) {
      refuseHere(socket, 503, 'PROXY_DRAINING', 'the proxy is shutting down')
    } else if (upgrade === undefined) {
      refuseHere(
        socket,
        400,
        'REQUEST_UPGRADE_REFUSED',
        'this listener tunnels no upgraded connection',
      )
    } else {
      upgraded.add(socket)
      socket.once('close', () => upgraded.delete(socket))
      upgrade(req, socket, head)
    }
  })
  // What node:http's parser refuses (and its header and request timers) is answered as every
  // other refusal, a problem with a stable code, rather than node's bare status line. As node
  // does: only when nothing of a response is on the wire yet, and the connection goes at once
  // (the parser has failed, so nothing more can be read from it). A request whose body was
  // being read then is logged with this answer, not as a client that left (listener-answer.ts).
  server.on('clientError', (error: Error & { code?: string }, socket: Duplex) => {
    const inFlight = (socket as Duplex & { _httpMessage?: { headersSent?: boolean } })._httpMessage
    if (socket.writable && inFlight?.headersSent !== true) {
      const [status, code, detail] = clientErrorAnswer(error.code, maxHeaderBytes)
      socket.write(rawProblem(status, code, detail))
      // A client that ended its side in the middle of a request (EOF) went away: logged as one
      // that left (499), though the answer is written in case it still reads.
      if (error.code !== 'HPE_INVALID_EOF_STATE') {
        markAnsweredByListener(socket, status, code)
        // A request the handler has (its body was being read) is logged with this answer on
        // its access line; one refused before the handler saw it is logged here, or nowhere.
        if (inFlight === undefined)
          handler.refused?.({
            status,
            code,
            detail,
            remote: (socket as Duplex & { remoteAddress?: string }).remoteAddress,
          })
      }
    }
    socket.destroy()
  })
  server.on('tlsClientError', (error: Error) => {
    log.debug('tls handshake failed', { error: error.message })
  })

  // One listener function for every response (no closure per request). `res.socket` is
  // already detached when `close` fires; the request keeps its socket.
  const onResponseClose = function (this: ServerResponse): void {
    onFinished(this, this.req.socket)
  }
  const onFinished = (res: ServerResponse, socket: Socket): void => {
    const responses = busy.get(socket)
    let first = false
    if (responses !== undefined) {
      const at = responses.indexOf(res)
      first = at === 0
      if (at === responses.length - 1) responses.pop()
      else if (at >= 0) responses.splice(at, 1)
    }
    const next = responses?.[0]
    // A connection whose response was already under way when the drain began: close it now
    // that the response is out, rather than waiting for the keep-alive timeout. Pipelined
    // requests still waiting are not started (as on the fast path): the client sees the
    // connection close before their answers, and may send them again elsewhere.
    if (draining) {
      if (next === undefined || first) socket.end()
      return
    }
    // The next pipelined request starts now that the one before it is answered, unless the
    // connection is going: the client went, or that answer closes it (a refusal, which
    // marks the connection closing, or `Connection: close`, which node ends the socket for).
    if (first && next !== undefined && socket.writable && !isConnectionClosing(socket)) {
      handler(next.req, next)
    }
  }
  // Without this listener Node sends `100 Continue` before the handler has seen the head, and
  // the client sends a body the proxy is about to refuse.
  server.on('checkContinue', (req, res: ServerResponse) => {
    awaitContinue(req)
    server.emit('request', req, res)
  })
  // Any other expectation: node would answer a bare 417 itself (no code, not logged, the
  // connection kept); the handler refuses it as it refuses everything else.
  server.on('checkExpectation', (req, res: ServerResponse) => {
    refuseExpectation(req)
    server.emit('request', req, res)
  })
  server.on('request', (req, res: ServerResponse) => {
    if (isConnectionClosing(req.socket)) {
      // A request pipelined behind a refused one: never processed. The refusal's response
      // says `Connection: close`, so node closes the socket once that response is out; ending
      // the socket here instead could cut it off while it still waits behind an earlier
      // response (when node parsed the whole pipeline at once, as it does with bytes the fast
      // path handed over).
      return
    }
    res.once('close', onResponseClose)
    if (draining) res.setHeader('connection', 'close')
    // node:http emits 'request' for every request of a pipeline as soon as it has parsed its
    // head; forwarded at once, they would reach the service concurrently and in any order (a
    // GET overtaking the POST before it), and one client's pipeline could fill a bulkhead.
    // Each waits until the response before it is done (onFinished starts it), as on the fast
    // path and as RFC 9112 §9.3.2 has a server process pipelined requests: in order. Its body,
    // unread meanwhile, stays in the request stream, which stops reading the socket once its
    // buffer is full.
    const responses = busy.get(req.socket)
    if (responses === undefined) {
      handler(req, res)
      return
    }
    responses.push(res)
    if (responses.length === 1) handler(req, res)
  })

  // Certificate hot reload.
  const watchers: FileWatch[] = []
  let reloadTimer: TimerHandle | undefined
  const reloadTls = (): boolean => {
    if (tls === undefined) return false
    let secure: SecureContextOptions
    try {
      secure = readTls()
      // Loads the PEMs and checks the key against the certificate before anything is swapped.
      createSecureContext(secure)
    } catch (error) {
      log.error('tls reload failed; keeping the previous certificate', {
        certFile: tls.certFile,
        error: (error as Error).message,
      })
      return false
    }
    ;(
      server as unknown as { setSecureContext(options: SecureContextOptions): void }
    ).setSecureContext(secure)
    log.info('tls certificate reloaded', { certFile: tls.certFile })
    return true
  }
  const scheduleReload = (): void => {
    if (reloadTimer !== undefined) deps.clock.clearTimeout(reloadTimer)
    reloadTimer = deps.clock.setTimeout(() => {
      reloadTimer = undefined
      reloadTls()
    }, debounceMs)
  }
  // Each file's folder is watched (editors, cert managers and Kubernetes secret volumes
  // replace files rather than write them). A folder watch that fails (an error, the folder
  // removed and created again) is armed again after 1 s and the file read then, instead of
  // the certificate never being reloaded again.
  const startWatching = (): void => {
    if (tls === undefined) return
    for (const file of [tls.certFile, tls.keyFile, tls.clientCaFile]) {
      if (file === undefined) continue
      watchers.push(
        watchFileContent(
          resolve(file),
          undefined,
          scheduleReload,
          (error) =>
            log.error('tls file watch failed', {
              file,
              error: error instanceof Error ? error.message : String(error),
            }),
          {
            clock: deps.clock,
            onRewatched: () => log.info('tls file watched again', { file }),
          },
        ),
      )
    }
  }

  // close(): its promise (later calls get the same one), and when it destroys what is still open.
  let closing: Promise<void> | undefined
  let hardStop: TimerHandle | undefined
  let hardStopAt = Number.POSITIVE_INFINITY
  // What the drain cut: requests still under way at its hard stop, and the tunnels it ended.
  let cutRequests = 0
  let closedTunnels = 0
  const armHardStop = (drainMs: number): void => {
    if (hardStop !== undefined) deps.clock.clearTimeout(hardStop)
    hardStopAt = deps.clock.now() + drainMs
    hardStop = deps.clock.setTimeout(() => {
      hardStop = undefined
      // Marked before they go, so that their forwards log DRAIN_TIMEOUT rather than ABORTED (a
      // client that went away): the proxy cut them (src/proxy/drain-cut.ts).
      // One per connection: the requests pipelined behind it never started.
      for (const responses of busy.values()) if (responses.length > 0) cutRequests++
      for (const connection of fastConnections) if (connection.busy) cutRequests++
      for (const socket of busy.keys()) markCutByDrain(socket)
      for (const socket of sockets) markCutByDrain(socket)
      server.closeAllConnections()
      for (const socket of sockets) socket.destroy()
    }, drainMs)
  }

  return {
    name: listener.name,
    server,
    get connections() {
      return sockets.size
    },
    get refusedConnections() {
      return refused
    },
    get cutRequests() {
      return cutRequests
    },
    get closedTunnels() {
      return closedTunnels
    },
    listen() {
      return new Promise<ListenerAddress>((resolvePromise, reject) => {
        const onError = (error: Error): void => reject(error)
        server.once('error', onError)
        server.listen(listener.port, listener.host, () => {
          server.off('error', onError)
          // Closed while the host name was being resolved (a start that gave up on a slow
          // resolver): close() found nothing listening, so the late bind is undone here.
          if (closing !== undefined) {
            server.close()
            reject(new Error(`listener ${listener.name} was closed before it was bound`))
            return
          }
          const info = server.address()
          if (info === null || typeof info === 'string') {
            reject(new Error('listener bound to a pipe, not a TCP port'))
            return
          }
          bound = { host: info.address, port: info.port }
          startWatching()
          resolvePromise(bound)
        })
      })
    },
    address() {
      return bound
    },
    reloadTls,
    close(drainMs = 0) {
      checkInteger('close.drainMs', drainMs, 0)
      // Closing already (a reload retired this server, and now the proxy stops): the same
      // drain, cut no later than this call asks, rather than a promise that resolves at once
      // while connections are still open.
      if (closing !== undefined) {
        if (hardStop !== undefined && deps.clock.now() + drainMs < hardStopAt) armHardStop(drainMs)
        return closing
      }
      draining = true
      for (const watcher of watchers.splice(0)) watcher.close()
      if (reloadTimer !== undefined) deps.clock.clearTimeout(reloadTimer)
      bound = undefined
      closing = new Promise<void>((resolvePromise) => {
        if (!server.listening) {
          resolvePromise()
          return
        }
        server.close(() => {
          if (hardStop !== undefined) deps.clock.clearTimeout(hardStop)
          hardStop = undefined
          if (sockets.size === 0) resolvePromise()
          else allClosed = resolvePromise
        })
        for (const responses of busy.values()) {
          for (const res of responses) if (!res.headersSent) res.setHeader('connection', 'close')
        }
        // Idle keep-alive connections, and ones still sending a request head, end now.
        server.closeIdleConnections()
        for (const [socket, responses] of busy) if (responses.length === 0) socket.destroy()
        for (const connection of fastConnections) connection.drain()
        closedTunnels = upgraded.size
        for (const socket of upgraded) socket.destroy()
        armHardStop(drainMs)
      })
      return closing
    },
  }
}
