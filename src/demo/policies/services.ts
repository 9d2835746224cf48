import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { type Clock, sleep, systemClock } from '../../core/clock.js'
import { checkFunction, checkObject } from '../../core/validate.js'

/** What a {@link FaultyService} does with one request. */
export type Reaction =
  /** Answer with `status` after `delayMs` (default 0): a healthy, slow or failing answer. */
  | { readonly kind: 'respond'; readonly status: number; readonly delayMs?: number }
  /** Reset the connection (TCP RST) without answering. */
  | { readonly kind: 'reset' }
  /** Never answer; the request stays open until the client gives up or the service closes. */
  | { readonly kind: 'hang' }

/** What a {@link Behaviour} knows about the request it decides on. */
export interface RequestInfo {
  /** 0 for the first request the service received, then 1, 2, ... */
  readonly index: number
  /** When the request arrived, on the service's clock. */
  readonly nowMs: number
  /** Requests still being worked on (delayed answers and hangs), this one not included. */
  readonly inFlight: number
}

/** Decides how a service treats each request; scenarios swap it to script failures. */
export type Behaviour = (request: RequestInfo) => Reaction

/** Counters of one {@link FaultyService} since it started (or since `resetStats()`). */
export interface ServiceStats {
  /** Requests received: the load on the service. */
  readonly received: number
  /** Answers with a status below 400. */
  readonly ok: number
  /** Answers with a status of 400 or more. */
  readonly errors: number
  /** Connections reset instead of answering. */
  readonly resets: number
  /** Requests left hanging. */
  readonly hangs: number
  /** Arrival time of every request, on the service's clock, in arrival order. */
  readonly arrivalsMs: readonly number[]
}

/** Options of {@link createFaultyService}. */
export interface FaultyServiceOptions {
  /**
   * How the service treats requests until `behave()` changes it.
   * @default answers 200 at once
   */
  readonly behaviour?: Behaviour
  /**
   * The clock for answer delays and arrival times.
   * @default systemClock
   */
  readonly clock?: Clock
}

/** A local HTTP service that misbehaves on purpose; see {@link createFaultyService}. */
export interface FaultyService {
  /** The base URL, `http://127.0.0.1:<port>`. */
  readonly url: string
  /** A snapshot of the counters. */
  readonly stats: ServiceStats
  /** Replaces the behaviour for requests that arrive from now on. */
  behave(behaviour: Behaviour): void
  /** Zeroes the counters (the request index keeps counting). */
  resetStats(): void
  /** Drops every open connection and stops listening. */
  close(): Promise<void>
}

const healthy: Behaviour = () => ({ kind: 'respond', status: 200 })

class FaultyHttpService implements FaultyService {
  readonly url: string
  readonly #server: Server
  readonly #clock: Clock
  #behaviour: Behaviour
  #index = 0
  #inFlight = 0
  #received = 0
  #ok = 0
  #errors = 0
  #resets = 0
  #hangs = 0
  #arrivalsMs: number[] = []

  constructor(server: Server, url: string, behaviour: Behaviour, clock: Clock) {
    this.#server = server
    this.url = url
    this.#behaviour = behaviour
    this.#clock = clock
    server.on('request', (request: IncomingMessage, response: ServerResponse) => {
      this.#handle(request, response)
    })
  }

  get stats(): ServiceStats {
    return {
      received: this.#received,
      ok: this.#ok,
      errors: this.#errors,
      resets: this.#resets,
      hangs: this.#hangs,
      arrivalsMs: [...this.#arrivalsMs],
    }
  }

  behave(behaviour: Behaviour): void {
    this.#behaviour = checkFunction('faultyService.behave(behaviour)', behaviour)
  }

  resetStats(): void {
    this.#received = 0
    this.#ok = 0
    this.#errors = 0
    this.#resets = 0
    this.#hangs = 0
    this.#arrivalsMs = []
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.#server.close(() => resolve())
      // Hanging requests would keep close() waiting for ever.
      this.#server.closeAllConnections()
    })
  }

  #handle(request: IncomingMessage, response: ServerResponse): void {
    const nowMs = this.#clock.now()
    this.#received++
    this.#arrivalsMs.push(nowMs)
    const reaction = this.#behaviour({ index: this.#index++, nowMs, inFlight: this.#inFlight })
    // Drain whatever body the client sent, so the connection stays usable.
    request.resume()
    switch (reaction.kind) {
      case 'reset':
        this.#resets++
        request.socket.resetAndDestroy()
        return
      case 'hang':
        this.#hangs++
        this.#inFlight++
        response.once('close', () => this.#inFlight--)
        return
      case 'respond': {
        const delayMs = reaction.delayMs ?? 0
        if (delayMs <= 0) {
          this.#answer(response, reaction.status)
          return
        }
        this.#inFlight++
        void sleep(this.#clock, delayMs).then(() => {
          this.#inFlight--
          // The client may have given up meanwhile; it then gets nothing.
          if (!response.destroyed) this.#answer(response, reaction.status)
        })
      }
    }
  }

  #answer(response: ServerResponse, status: number): void {
    if (status < 400) this.#ok++
    else this.#errors++
    response.writeHead(status, { 'content-type': 'text/plain' })
    response.end(status < 400 ? 'ok' : 'failed')
  }
}

/**
 * Starts an HTTP service on 127.0.0.1 and a random port that treats each request as its
 * {@link Behaviour} says: answer (after a delay, with any status), reset the connection, or
 * hang. Scenarios script outages by swapping the behaviour or by reading the arrival time and
 * the number of requests in flight, and read the load the service took from its `stats`.
 *
 * @example
 * ```ts
 * const service = await createFaultyService()
 * service.behave(({ index }) => (index % 2 === 0 ? { kind: 'respond', status: 503 } : { kind: 'reset' }))
 * await fetch(service.url).catch(() => {})
 * console.log(service.stats.received) // 1
 * await service.close()
 * ```
 */
export async function createFaultyService(
  options: FaultyServiceOptions = {},
): Promise<FaultyService> {
  checkObject('faultyService', options)
  const behaviour =
    options.behaviour === undefined
      ? healthy
      : checkFunction<Behaviour>('faultyService.behaviour', options.behaviour)
  const server = createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject)
      resolve()
    })
  })
  const { port } = server.address() as AddressInfo
  return new FaultyHttpService(
    server,
    `http://127.0.0.1:${port}`,
    behaviour,
    options.clock ?? systemClock,
  )
}
