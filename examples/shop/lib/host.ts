// The small harness every shop process runs in: a node:http server for the service's API, with
// a chaos layer in front of it and an admin endpoint the demo process drives (`/_admin/chaos`,
// `/_admin/state`). Chaos is injected here, inside the service, so what the callers see (slow
// answers, 503s, reset connections, replies lost after the work was done) is what a real
// network and a real overloaded service do to them.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { sleep, systemClock } from 'breakwater'

/** What the chaos layer does to incoming requests (admin requests are never touched). */
export interface ChaosSettings {
  /** Added to every request before it is handled. */
  readonly latencyMs: number
  /** Share of requests answered 503 without being handled (0..1). */
  readonly errorRate: number
  /** Share of connections reset without an answer, before the request is handled (0..1). */
  readonly resetRate: number
  /**
   * Share of requests handled (the work is done and committed) whose reply is then lost: the
   * connection is reset instead. The caller cannot tell this from a failure and retries, which
   * is exactly what idempotency keys are for. For a consumer, the share of messages handled
   * whose acknowledgement is lost: the broker delivers them again.
   */
  readonly lostReplyRate: number
}

/** No chaos. */
export const calm: ChaosSettings = { latencyMs: 0, errorRate: 0, resetRate: 0, lostReplyRate: 0 }

// The chaos of this process, also for its non-HTTP work (a consumer losing its acks).
let currentSettings: ChaosSettings = calm

/** The chaos this process is under right now. */
export function currentChaos(): ChaosSettings {
  return currentSettings
}

/** A service's request handler. */
export type Handler = (req: IncomingMessage, res: ServerResponse) => Promise<void> | void

/** Options of {@link hostService}. */
export interface HostOptions {
  /** The process name shown on the dashboard. */
  readonly name: string
  /** The loopback port to listen on. */
  readonly port: number
  /** The service's API; absent for processes that only have the admin endpoint (relay). */
  readonly handler?: Handler
  /** Service-specific figures for `/_admin/state` (breakers, lag, worker metrics...). */
  readonly state?: () => unknown
  /** Releases the service's resources on SIGTERM, before the process exits. */
  readonly close?: () => Promise<void>
}

/** Sends a JSON answer. */
export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
  })
  res.end(text)
}

/** Reads a request body as JSON (an empty body is `{}`). */
export async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = []
  for await (const chunk of req) chunks.push(chunk as Buffer)
  const text = Buffer.concat(chunks).toString('utf8')
  return text === '' ? {} : (JSON.parse(text) as Record<string, unknown>)
}

// Requests per second over the last few seconds, from per-second buckets.
class RateMeter {
  readonly #buckets = new Map<number, number>()
  mark(): void {
    const second = Math.floor(Date.now() / 1000)
    this.#buckets.set(second, (this.#buckets.get(second) ?? 0) + 1)
    for (const key of this.#buckets.keys()) if (key < second - 10) this.#buckets.delete(key)
  }
  perSecond(windowS = 3): number {
    const now = Math.floor(Date.now() / 1000)
    let sum = 0
    for (let s = now - windowS; s < now; s++) sum += this.#buckets.get(s) ?? 0
    return sum / windowS
  }
}

function loseReply(req: IncomingMessage, res: ServerResponse, lost: () => void): void {
  // The handler runs to the end (its transaction commits); only the bytes never leave.
  const destroy = (): ServerResponse => {
    if (!req.socket.destroyed) lost()
    req.socket.destroy()
    return res
  }
  res.writeHead = destroy as unknown as ServerResponse['writeHead']
  res.end = destroy as unknown as ServerResponse['end']
}

/**
 * Starts the process's HTTP server with the chaos layer and the admin endpoint, tells the demo
 * process it is ready (IPC message `{ type: 'ready' }`), and stops cleanly on SIGTERM.
 */
export async function hostService(options: HostOptions): Promise<Server> {
  let chaos: ChaosSettings = calm
  let requests = 0
  let errors = 0
  let inFlight = 0
  // Replies the chaos layer swallowed after the handler ran: each is a call the caller sees
  // fail although its work was done (tests wait for some before judging the idempotency).
  let repliesLost = 0
  const rate = new RateMeter()
  const startedAt = Date.now()

  const admin = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if (req.url === '/_admin/chaos' && req.method === 'POST') {
      chaos = { ...calm, ...((await readJson(req)) as Partial<ChaosSettings>) }
      currentSettings = chaos
      sendJson(res, 200, chaos)
    } else if (req.url === '/_admin/state') {
      sendJson(res, 200, {
        name: options.name,
        pid: process.pid,
        uptimeMs: Date.now() - startedAt,
        requests,
        errors,
        inFlight,
        repliesLost,
        rps: rate.perSecond(),
        chaos,
        ...(options.state === undefined ? {} : { details: await options.state() }),
      })
    } else {
      sendJson(res, 404, { error: 'unknown admin call' })
    }
  }

  const server = createServer((req, res) => {
    const run = async (): Promise<void> => {
      if (req.url?.startsWith('/_admin/')) return admin(req, res)
      requests++
      rate.mark()
      if (options.handler === undefined) return sendJson(res, 404, { error: 'no API here' })
      if (chaos.latencyMs > 0) await sleep(systemClock, chaos.latencyMs)
      if (Math.random() < chaos.resetRate) {
        errors++
        req.socket.destroy()
        return
      }
      if (Math.random() < chaos.errorRate) {
        errors++
        return sendJson(res, 503, { error: 'injected failure' })
      }
      if (Math.random() < chaos.lostReplyRate)
        loseReply(req, res, () => {
          repliesLost++
        })
      inFlight++
      try {
        await options.handler(req, res)
      } finally {
        inFlight--
        if (res.statusCode >= 500) errors++
      }
    }
    run().catch((error: unknown) => {
      errors++
      if (!res.headersSent) sendJson(res, 500, { error: String(error) })
      else res.destroy()
    })
  })
  // Callers keep connections alive; a service stopping must not wait for them.
  server.keepAliveTimeout = 5_000
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(options.port, '127.0.0.1', () => resolve())
  })

  process.once('SIGTERM', () => {
    server.closeAllConnections()
    server.close()
    void (options.close?.() ?? Promise.resolve()).finally(() => process.exit(0))
  })
  // The demo process is gone (even killed outright): nobody will stop this one, so it goes.
  process.once('disconnect', () => process.exit(0))
  process.send?.({ type: 'ready', name: options.name, pid: process.pid })
  return server
}
