// The admin API: node:http on admin.host (127.0.0.1 by default), every /admin/ path behind a
// bearer token compared in constant time, and the unauthenticated probes /metrics, /healthz
// and /readyz on the same port. Bodies are small JSON documents; a bad one is answered 400
// with a problem+json naming the field. Neither the token nor any secret is ever logged or
// returned.

import { createHash, timingSafeEqual } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { BlockList, isIP, type Socket } from 'node:net'
import type { ErrorCode } from '../../core/error-codes.js'
import { BreakwaterError, InvalidOptionError } from '../../core/errors.js'
import { checkInteger, checkObject } from '../../core/validate.js'
import { PROMETHEUS_CONTENT_TYPE } from '../../observability/metrics.js'
import { adminTokenProblem } from '../config/files.js'
import { limitsDefaults } from '../config/schema.js'
import type { AdminConfig, ProxyDeps, RouteTargetConfig, SecretSource } from '../contracts.js'
import { connectionsCheckingIntervalMs } from '../inbound/listener.js'
import { maxRouteWeight } from '../inbound/routes.js'
import { RateLimitedLog } from '../rate-limited-log.js'
import {
  type AdminBackend,
  configForDisplay,
  keepExamplesOf,
  mergeRoutes,
  PartiallyAppliedError,
  type StartOnlySettings,
} from './backend.js'

/** Options of {@link startAdminServer}. */
export interface AdminServerOptions {
  /** Where to listen and the token's source. */
  readonly config: AdminConfig
  /** What the endpoints act on. */
  readonly backend: AdminBackend
  /** Clock, logger and metrics of the proxy. */
  readonly deps: ProxyDeps
  /**
   * Where `{ env }` token references are read.
   * @default process.env
   */
  readonly env?: Readonly<Record<string, string | undefined>> | undefined
  /**
   * Largest request body accepted (bytes).
   * @default 65536
   */
  readonly maxBodyBytes?: number | undefined
  /**
   * How long a request head may take to arrive (ms) before it is answered 408; at most
   * `requestTimeoutMs`. The listeners' default (`limits.headersTimeoutMs`).
   * @default 10000
   */
  readonly headersTimeoutMs?: number | undefined
  /**
   * How long a whole request may take to arrive (ms) before it is answered 408. The listeners'
   * default (`limits.requestTimeoutMs`).
   * @default 30000
   */
  readonly requestTimeoutMs?: number | undefined
}

/** A running admin API. */
export interface AdminServer {
  /** The bound address (the real port when the config said 0). */
  address(): { host: string; port: number }
  /** Stops accepting and closes open connections. */
  close(): Promise<void>
}

/** A 4xx/5xx answer of the admin API. */
class AdminProblem extends Error {
  constructor(
    readonly status: number,
    // Registered codes only: the compiler checks each against docs/errors.md's registry.
    readonly code: ErrorCode,
    readonly detail: string,
    readonly extra: Record<string, unknown> = {},
  ) {
    super(detail)
  }
}

/** The client closed its connection before its request had arrived whole. */
class ClientGone extends Error {
  constructor(cause: unknown) {
    super('the client closed the connection', { cause })
  }
}

const titles: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  404: 'Not Found',
  405: 'Method Not Allowed',
  413: 'Content Too Large',
  415: 'Unsupported Media Type',
  422: 'Unprocessable Content',
  500: 'Internal Server Error',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
}

/**
 * Reads the admin token from its source: the environment variable, or the file (trimmed;
 * read on each request so a rotated file applies at once). Undefined when unset or empty.
 */
export async function resolveSecret(
  source: SecretSource,
  env: Readonly<Record<string, string | undefined>>,
): Promise<string | undefined> {
  const value =
    'env' in source ? env[source.env] : await readFile(source.file, 'utf8').catch(() => undefined)
  const trimmed = value?.trim()
  return trimmed === undefined || trimmed === '' ? undefined : trimmed
}

/**
 * True when `presented` equals `expected`. Both are hashed first, so the comparison runs over
 * two equal-length digests with `timingSafeEqual`: its time reveals neither the token's
 * content nor its length.
 */
export function tokenMatches(presented: string, expected: string): boolean {
  const a = createHash('sha256').update(presented).digest()
  const b = createHash('sha256').update(expected).digest()
  return timingSafeEqual(a, b)
}

/**
 * Starts the admin API. Endpoints (all JSON; `/admin/*` need `Authorization: Bearer <token>`):
 * `GET /admin/config`, `GET /admin/services`, `GET /admin/routes`,
 * `GET /admin/routes/:name/mismatches`, `POST /admin/routes/:name` (`{ "targets": [...] }`),
 * `DELETE /admin/routes/:name/override`, `POST /admin/reload`,
 * `POST /admin/services/:name/isolate`, `POST /admin/services/:name/reset`; and without a
 * token `GET /metrics`, `/healthz`, `/readyz`.
 *
 * @example
 * ```ts
 * const admin = await startAdminServer({ config: proxyConfig.admin, backend, deps })
 * console.log(admin.address().port)
 * ```
 */
export async function startAdminServer(options: AdminServerOptions): Promise<AdminServer> {
  checkObject('options', options)
  const { config, backend, deps } = options
  checkObject('config', config)
  checkInteger('config.port', config.port, 0, 65_535)
  const maxConnections =
    config.maxConnections === undefined
      ? undefined
      : checkInteger('config.maxConnections', config.maxConnections, 1, 100_000)
  const env = options.env ?? process.env
  const maxBodyBytes = checkInteger('maxBodyBytes', options.maxBodyBytes ?? 65_536, 2, 16_777_216)
  const headersTimeoutMs = checkInteger(
    'headersTimeoutMs',
    options.headersTimeoutMs ?? limitsDefaults.headersTimeoutMs,
    1,
  )
  const requestTimeoutMs = checkInteger(
    'requestTimeoutMs',
    options.requestTimeoutMs ?? limitsDefaults.requestTimeoutMs,
    1,
  )
  if (headersTimeoutMs > requestTimeoutMs)
    throw new InvalidOptionError(
      'headersTimeoutMs',
      `at most requestTimeoutMs (${requestTimeoutMs})`,
      headersTimeoutMs,
    )
  const log = deps.logger.child({ component: 'admin' })
  const initial = await resolveSecret(config.token, env)
  if (initial !== undefined && initial.length < 16)
    log.warn('admin token is shorter than 16 characters; use a long random token')
  if (!isLoopbackHost(config.host))
    log.warn('admin api listens beyond loopback: make sure only operators can reach it', {
      host: config.host,
    })
  // Not logged as `token`: the logger redacts a field of that name whole, and the warning must
  // say which variable or file to fix.
  const tokenSource =
    'env' in config.token ? { env: config.token.env } : { file: config.token.file }
  if (initial === undefined)
    log.warn('admin token is not set: every /admin/ request will be refused', {
      tokenSource,
    })
  else if (adminTokenProblem(initial) !== undefined)
    // No header can carry it as written. The proxy refuses such a token (and an unset variable)
    // before it starts this server (checkAdminTokenFile, checkEnvSecrets): these warnings are
    // for a caller of startAdminServer itself.
    log.warn(
      'admin token has a character outside visible ASCII inside: every /admin/ request will be refused',
      { tokenSource },
    )

  // `admin` and `workers` are read at start only: GET /admin/config shows the ones running
  // (this server's settings, and the worker count of the config in force now, at the start)
  // rather than a reloaded file's. A backend without a config (a test's) shows the file's.
  const running: StartOnlySettings | undefined = await Promise.resolve()
    .then(() => backend.config())
    .then(
      (started) => ({ admin: config, workers: started.workers }),
      () => undefined,
    )

  const sockets = new Set<Socket>()
  const server: Server = createServer(
    {
      insecureHTTPParser: false,
      // The gateway's limits, checked as often as a listener checks them (listener.ts): with
      // node's default interval (30 s) a half-sent head was answered 408 after up to 40 s.
      headersTimeout: headersTimeoutMs,
      requestTimeout: requestTimeoutMs,
      connectionsCheckingInterval: connectionsCheckingIntervalMs(
        headersTimeoutMs,
        requestTimeoutMs,
      ),
    },
    (req, res) => {
      // A request node parsed behind an answer that closes the connection (sendProblem): never
      // processed, as the listeners drop one (RFC 9112 §9.6).
      if (closingSockets.has(req.socket)) return
      handle(req, res).catch((error: unknown) => {
        if (error instanceof ClientGone) {
          // The client's doing, not a fault of the proxy: warn, as the gateway logs a request
          // whose body never arrived (request.ts). Nobody is left to answer.
          log.warn('admin request abandoned', {
            method: req.method,
            path: pathOf(req),
            remote: req.socket.remoteAddress,
            detail: 'the client closed the connection before the request body arrived',
          })
          res.destroy()
          return
        }
        if (!(error instanceof AdminProblem))
          log.error('admin request failed', {
            error: error instanceof Error ? error.message : String(error),
          })
        const problem =
          error instanceof AdminProblem
            ? error
            : new AdminProblem(500, 'INTERNAL_ERROR', 'internal error')
        if (!res.headersSent) sendProblem(res, problem)
        else res.destroy()
      })
    },
  )
  if (maxConnections !== undefined) server.maxConnections = maxConnections
  server.on('connection', (socket: Socket) => {
    sockets.add(socket)
    socket.once('close', () => sockets.delete(socket))
  })

  async function authorize(req: IncomingMessage): Promise<void> {
    const header = req.headers.authorization
    const match = typeof header === 'string' ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null
    const expected = await resolveSecret(config.token, env)
    const presented = match?.[1]
    // Hash and compare even when something is missing, so a refusal takes the same path.
    const ok =
      tokenMatches(presented ?? '', expected ?? '') &&
      presented !== undefined &&
      expected !== undefined
    if (!ok) {
      const where = { method: req.method, path: pathOf(req), remote: req.socket.remoteAddress }
      // A token source that became empty or unreadable after the start refuses every request:
      // the line names the file (or variable) to fix, not the client's token.
      if (expected === undefined)
        log.warn(
          `admin request refused: the admin token ${'env' in config.token ? 'variable' : 'file'} holds no usable token`,
          { ...where, tokenSource },
        )
      else log.warn('admin request refused: missing or wrong token', where)
      throw new AdminProblem(401, 'UNAUTHORIZED', 'a valid bearer token is required', {})
    }
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = req.method ?? 'GET'
    const path = pathOf(req)
    if (path === '/healthz')
      return only(method, ['GET', 'HEAD'], () => sendJson(res, 200, { status: 'ok' }))
    if (path === '/readyz') {
      return only(method, ['GET', 'HEAD'], () => {
        if (backend.ready()) {
          sendJson(res, 200, { status: 'ready' })
          return
        }
        const down = backend.listenersDown()
        sendJson(res, 503, {
          status: 'not ready',
          ...(down.length === 0
            ? {}
            : {
                listenersDown: down,
                detail: down.map((name) => `listener ${name} is not listening`).join('; '),
              }),
        })
      })
    }
    if (path === '/metrics') {
      return only(method, ['GET'], async () => {
        const text = await backend.metricsText()
        res.writeHead(200, { 'content-type': PROMETHEUS_CONTENT_TYPE, 'cache-control': 'no-store' })
        res.end(text)
      })
    }
    if (path !== '/admin' && !path.startsWith('/admin/'))
      throw new AdminProblem(404, 'NOT_FOUND', 'no such endpoint')
    await authorize(req)
    const parts = path.split('/').slice(2).map(decodeSegment)

    // /admin/config
    if (parts.length === 1 && parts[0] === 'config')
      return only(method, ['GET'], async () =>
        sendJson(res, 200, configForDisplay(await backend.config(), running)),
      )
    if (parts.length === 1 && parts[0] === 'services')
      return only(method, ['GET'], async () => {
        const { answered, notAnswered } = split(await backend.services())
        sendJson(res, 200, { workers: answered, ...notAnswered })
      })
    if (parts.length === 1 && parts[0] === 'routes') {
      return only(method, ['GET'], async () => {
        const { answered, notAnswered } = split(await backend.routes())
        const keep = keepExamplesOf(await backend.config())
        sendJson(res, 200, {
          routes: mergeRoutes(answered, keep),
          workers: answered.length,
          ...notAnswered,
        })
      })
    }
    if (parts.length === 1 && parts[0] === 'reload') {
      return only(method, ['POST'], async () => {
        await readEmptyBody(req, maxBodyBytes)
        // The multi-process primary says what the reload did in each worker.
        const { refused: error, workers } = await (backend.reloadByWorker === undefined
          ? backend.reload().then((refused) => ({ refused, workers: undefined }))
          : backend.reloadByWorker()
        ).catch(toProblem)
        const perWorker = workers === undefined ? {} : { workers }
        if (error === undefined) {
          log.info('config reloaded through the admin API')
          sendJson(res, 200, { reloaded: true, ...perWorker })
        } else {
          throw new AdminProblem(
            422,
            error.code,
            'the new config was refused; the running config stays',
            {
              problems: error.problems.map((p) => ({
                path: p.path,
                message: p.message,
                line: p.line,
                column: p.column,
              })),
              // The full count: past 50, `problems` ends with a `(more)` entry for the rest.
              problemCount: error.problemCount,
              ...perWorker,
            },
          )
        }
      })
    }
    if (parts[0] === 'routes' && parts.length >= 2) {
      const name = parts[1] as string
      // Checked against the config in force, which the multi-process primary holds: asking the
      // workers found no route while none was ready (starting, crash-looping), and failed
      // every command while one did not answer.
      const known = async (): Promise<void> => {
        const config = await backend.config()
        if (!config.listeners.some((l) => l.routes.some((r) => r.name === name)))
          throw new AdminProblem(404, 'ROUTE_NOT_FOUND', `no route named ${JSON.stringify(name)}`)
      }
      // A method the path does not take is 405 for a route that exists only: for one that
      // does not (`orders%2Fx`), 405 with an `Allow` said the resource was there.
      const onRoute = async (allowed: readonly string[], run: () => Promise<void>) => {
        if (!withHead(allowed).includes(method)) await known()
        return only(method, allowed, run)
      }
      if (parts.length === 2) {
        return onRoute(['POST'], async () => {
          await known()
          const targets = parseTargets(await readJson(req, maxBodyBytes))
          await backend.switchRoute(name, targets).catch(toProblem)
          log.info('route switched through the admin API', { route: name, targets })
          sendJson(res, 200, { route: name, targets, overridden: true })
        })
      }
      if (parts.length === 3 && parts[2] === 'override') {
        return onRoute(['DELETE'], async () => {
          await known()
          await backend.resetRoute(name).catch(toProblem)
          log.info('route override removed through the admin API', { route: name })
          sendJson(res, 200, { route: name, overridden: false })
        })
      }
      if (parts.length === 3 && parts[2] === 'mismatches') {
        return onRoute(['GET'], async () => {
          await known()
          const config = await backend.config()
          const configured = config.listeners.flatMap((l) => l.routes).find((r) => r.name === name)
          if (configured?.shadow === undefined)
            throw new AdminProblem(
              404,
              'SHADOW_NOT_CONFIGURED',
              `route ${JSON.stringify(name)} has no shadow`,
            )
          const { answered, notAnswered } = split(await backend.routes())
          // No worker answered (none ready, or none in time): nothing counted yet.
          const shadow = mergeRoutes(answered, keepExamplesOf(config)).find(
            (r) => r.name === name,
          )?.shadow
          sendJson(res, 200, {
            route: name,
            compared: shadow?.compared ?? 0,
            mismatches: shadow?.mismatches ?? 0,
            examples: shadow?.examples ?? [],
            ...notAnswered,
          })
        })
      }
    }
    if (
      parts[0] === 'services' &&
      parts.length === 3 &&
      (parts[2] === 'isolate' || parts[2] === 'reset')
    ) {
      const name = parts[1] as string
      const action = parts[2]
      // Checked against the config in force (see `known` above), and before the method, as for
      // routes: 405 with an `Allow` would say the service is there.
      if (!(await backend.config()).services.has(name))
        throw new AdminProblem(404, 'SERVICE_NOT_FOUND', `no service named ${JSON.stringify(name)}`)
      return only(method, ['POST'], async () => {
        await readEmptyBody(req, maxBodyBytes)
        await (action === 'isolate' ? backend.isolate(name) : backend.reset(name)).catch(toProblem)
        log.info(`service ${action === 'isolate' ? 'isolated' : 'reset'} through the admin API`, {
          service: name,
        })
        sendJson(res, 200, { service: name, action })
      })
    }
    throw new AdminProblem(404, 'NOT_FOUND', 'no such endpoint')

    async function only(
      actual: string,
      allowed: readonly string[],
      run: () => void | Promise<void>,
    ): Promise<void> {
      const methods = withHead(allowed)
      if (!methods.includes(actual)) {
        res.setHeader('allow', methods.join(', '))
        throw new AdminProblem(405, 'METHOD_NOT_ALLOWED', `use ${methods.join(' or ')}`)
      }
      await run()
    }
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(config.port, config.host, () => {
      server.off('error', reject)
      resolve()
    })
  })
  // An accept that fails for want of file descriptors (EMFILE or ENFILE) is handled inside
  // libuv (it accepts and closes the connections with a descriptor kept in reserve) and Node
  // emits nothing, so those are not logged. Only when that reserve is gone too, or for another
  // accept error, does an 'error' event come, which Node throws when nobody listens, ending
  // the proxy with it. The server keeps listening; such errors are logged at most every 10 s,
  // with how many were not.
  const acceptFailures = new RateLimitedLog(deps.clock, (fields) =>
    log.error('accepting a connection failed', fields),
  )
  server.on('error', (error: NodeJS.ErrnoException) => {
    acceptFailures.log({ code: error.code, error: error.message })
  })
  const info = server.address()
  const bound =
    info !== null && typeof info === 'object'
      ? { host: info.address, port: info.port }
      : { host: config.host, port: config.port }
  log.info('admin api listening', bound)
  let closing: Promise<void> | undefined
  return {
    address: () => bound,
    // Memoised: a second close() (a signal during shutdown) waits for the same close.
    close: () => {
      closing ??= new Promise<void>((resolve) => {
        if (!server.listening) {
          resolve()
          return
        }
        server.close(() => resolve())
        server.closeIdleConnections()
        for (const socket of sockets) socket.destroy()
      })
      return closing
    },
  }
}

// Loopback by address, not by spelling: all of 127.0.0.0/8 (BlockList also matches its
// IPv4-mapped IPv6 form, ::ffff:127.x.y.z) and ::1 in any of its IPv6 spellings.
const loopbackAddresses = new BlockList()
loopbackAddresses.addSubnet('127.0.0.0', 8, 'ipv4')
loopbackAddresses.addAddress('::1', 'ipv6')

/**
 * True when `host` only reaches this machine: an address in 127.0.0.0/8, `::1` however
 * written (`[::1]`, `0:0:0:0:0:0:0:1`), IPv4-mapped loopback (`::ffff:127.0.0.1`), or
 * `localhost` in any case. The wildcards `0.0.0.0` and `::` and every other name are not:
 * a name such as `127.example.com` may resolve anywhere.
 *
 * @internal Exported for tests.
 */
export function isLoopbackHost(host: string): boolean {
  const bare = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host
  if (/^localhost\.?$/i.test(bare)) return true
  const family = isIP(bare)
  if (family === 0) return false
  try {
    return loopbackAddresses.check(bare, family === 4 ? 'ipv4' : 'ipv6')
  } catch {
    // An address BlockList cannot read (a scope id it refuses): not known to be loopback, so
    // the warning is given.
    return false
  }
}

function pathOf(req: IncomingMessage): string {
  const url = req.url ?? '/'
  const q = url.indexOf('?')
  const path = q === -1 ? url : url.slice(0, q)
  return path.length > 1 && path.endsWith('/') ? path.slice(0, -1) : path
}

// HEAD is answered wherever GET is (RFC 9110 §9.3.2): same status and headers, no body
// (node:http drops the body of a HEAD response).
function withHead(allowed: readonly string[]): readonly string[] {
  return allowed.includes('GET') && !allowed.includes('HEAD') ? [...allowed, 'HEAD'] : allowed
}

function decodeSegment(segment: string): string {
  try {
    return decodeURIComponent(segment)
  } catch {
    throw new AdminProblem(400, 'BAD_PATH', 'a path segment is not valid percent-encoding')
  }
}

/**
 * The workers that answered a read, and `{ notAnsweredBy: [{ pid, error }] }` naming those
 * that did not (multi-process mode), or `{}` when all did.
 */
function split<T extends { readonly pid: number; readonly error?: string }>(
  workers: readonly T[],
): { answered: T[]; notAnswered: { notAnsweredBy?: { pid: number; error: string }[] } } {
  const answered = workers.filter((w) => w.error === undefined)
  const missing = workers.flatMap((w) =>
    w.error === undefined ? [] : [{ pid: w.pid, error: w.error }],
  )
  return { answered, notAnswered: missing.length === 0 ? {} : { notAnsweredBy: missing } }
}

/**
 * The body of a command that takes none: empty, or an empty JSON object. Anything else is
 * refused (400 naming the first field) rather than ignored, as `POST /admin/routes/:name`
 * refuses a field it does not know: a caller who sent one expected it to mean something.
 */
async function readEmptyBody(req: IncomingMessage, maxBytes: number): Promise<void> {
  const body = await readJson(req, maxBytes, {})
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    throw new AdminProblem(
      400,
      'INVALID_BODY',
      `(body): expected no body or {}, got ${describe(body)}`,
      { field: '(body)' },
    )
  const field = Object.keys(body)[0]
  if (field !== undefined)
    throw new AdminProblem(
      400,
      'INVALID_BODY',
      `${field}: expected no such field (this command takes no body), got ${describe((body as Record<string, unknown>)[field])}`,
      { field },
    )
}

function toProblem(error: unknown): never {
  if (error instanceof AdminProblem) throw error
  // The admin API closes after the listeners' drain: a command meanwhile finds the proxy
  // closed, which is no failure of the admin API.
  if (BreakwaterError.is(error) && error.code === 'PROXY_CLOSED')
    throw new AdminProblem(503, 'PROXY_CLOSED', error.message)
  if (error instanceof PartiallyAppliedError)
    throw new AdminProblem(502, 'PARTIALLY_APPLIED', error.message, {
      appliedBy: error.applied,
      notAppliedBy: error.failed,
      ...(error.workers === undefined ? {} : { workers: error.workers }),
    })
  if (
    error instanceof InvalidOptionError ||
    (BreakwaterError.is(error) && error.code === 'INVALID_OPTION')
  ) {
    const option = (error as InvalidOptionError).option
    throw new AdminProblem(
      400,
      'INVALID_BODY',
      error.message,
      option === undefined ? {} : { field: option },
    )
  }
  throw error
}

/** The JSON body; `empty` stands for a body that is empty or blank (when given). */
async function readJson(req: IncomingMessage, maxBytes: number, empty?: unknown): Promise<unknown> {
  const type = req.headers['content-type']
  const length = req.headers['content-length']
  if (
    empty !== undefined &&
    (length === undefined || length === '0') &&
    req.headers['transfer-encoding'] === undefined
  )
    return empty
  if (type !== undefined && !/^application\/(.+\+)?json\b/i.test(type))
    throw new AdminProblem(415, 'UNSUPPORTED_MEDIA_TYPE', 'send application/json')
  // Refused before a byte of it is read, as the listeners refuse an announced length.
  if (length !== undefined && Number(length) > maxBytes)
    throw new AdminProblem(413, 'BODY_TOO_LARGE', `the body is over ${maxBytes} bytes`)
  const chunks: Buffer[] = []
  let size = 0
  try {
    for await (const chunk of req) {
      size += (chunk as Buffer).length
      if (size > maxBytes)
        throw new AdminProblem(413, 'BODY_TOO_LARGE', `the body is over ${maxBytes} bytes`)
      chunks.push(chunk as Buffer)
    }
  } catch (error) {
    // node:http ends the body of a connection closed mid-way with an error ('aborted').
    if (error instanceof AdminProblem || req.complete) throw error
    throw new ClientGone(error)
  }
  const text = Buffer.concat(chunks).toString('utf8')
  if (empty !== undefined && text.trim() === '') return empty
  try {
    return JSON.parse(text)
  } catch {
    throw new AdminProblem(400, 'INVALID_BODY', 'the body is not valid JSON', { field: '(body)' })
  }
}

/** `{ "targets": [{ "service": "legacy", "weight": 1 }] }`, checked field by field. */
export function parseTargets(body: unknown): RouteTargetConfig[] {
  const bad = (field: string, expected: string, value: unknown): never => {
    throw new AdminProblem(
      400,
      'INVALID_BODY',
      `${field}: expected ${expected}, got ${describe(value)}`,
      {
        field,
      },
    )
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    bad('(body)', 'a JSON object { "targets": [...] }', body)
  const { targets, ...rest } = body as Record<string, unknown>
  const unknown = Object.keys(rest)[0]
  if (unknown !== undefined) bad(unknown, 'no such field (only "targets")', rest[unknown])
  if (!Array.isArray(targets) || targets.length === 0)
    bad('targets', 'a non-empty list of { service, weight }', targets)
  const out: RouteTargetConfig[] = []
  const seen = new Set<string>()
  ;(targets as unknown[]).forEach((target, i) => {
    if (typeof target !== 'object' || target === null || Array.isArray(target))
      bad(`targets[${i}]`, 'an object { service, weight }', target)
    const { service, weight, ...others } = target as Record<string, unknown>
    const extra = Object.keys(others)[0]
    if (extra !== undefined) bad(`targets[${i}].${extra}`, 'no such field', others[extra])
    if (typeof service !== 'string' || service === '')
      bad(`targets[${i}].service`, 'a service name', service)
    if (seen.has(service as string))
      bad(`targets[${i}].service`, 'a service not already listed', service)
    seen.add(service as string)
    const w = weight === undefined ? 1 : weight
    if (typeof w !== 'number' || !Number.isFinite(w) || w < 0 || w > maxRouteWeight)
      bad(`targets[${i}].weight`, `a number from 0 to ${maxRouteWeight}`, weight)
    out.push({ service: service as string, weight: w as number })
  })
  if (!out.some((t) => t.weight > 0)) bad('targets', 'at least one weight > 0', 'all weights 0')
  return out
}

function describe(value: unknown): string {
  if (value === undefined) return 'nothing'
  if (typeof value === 'string')
    return JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}…` : value)
  if (typeof value === 'number' || typeof value === 'boolean' || value === null)
    return String(value)
  if (Array.isArray(value)) return `a list of ${value.length}`
  return 'an object'
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
  })
  res.end(res.req?.method === 'HEAD' ? undefined : text)
}

// Sockets whose current answer said `Connection: close` (sendProblem): node may still parse a
// request pipelined behind it, which the server then ignores.
const closingSockets = new WeakSet<Socket>()

// Whether part of the request's body has not arrived (or was never read to its end).
function hasUnreadBody(req: IncomingMessage): boolean {
  if (req.complete) return false
  const length = req.headers['content-length']
  return (length !== undefined && length !== '0') || req.headers['transfer-encoding'] !== undefined
}

function sendProblem(res: ServerResponse, problem: AdminProblem): void {
  const text = JSON.stringify({
    type: 'about:blank',
    title: titles[problem.status] ?? 'Error',
    status: problem.status,
    code: problem.code,
    detail: problem.detail,
    ...problem.extra,
  })
  const headers: Record<string, string | number> = {
    'content-type': 'application/problem+json',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
  }
  if (problem.status === 401) headers['www-authenticate'] = 'Bearer realm="breakwater-admin"'
  if (hasUnreadBody(res.req)) {
    // The rest of the body is not wanted (413 stops reading mid-way; 401, 404, 405 and 415
    // are answered before it is read): the connection closes after this answer, as after a
    // listener's refusal. Kept open, a 413's connection was left with the body half read and
    // the client's next request on it failed; and node would otherwise read and drop a body
    // of any size before the next request.
    headers.connection = 'close'
    // The response's: a request destroyed mid-body (readJson's loop) has let go of its socket.
    if (res.socket !== null) closingSockets.add(res.socket)
  }
  res.writeHead(problem.status, headers)
  res.end(text)
}
