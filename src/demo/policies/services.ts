import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { type Clock, sleep, type TimerHandle } from '../../core/clock.js'
import { InvalidOptionError } from '../../core/errors.js'
import { checkClock, checkFunction, checkObject } from '../../core/validate.js'

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
  readonly behaviour?: Behaviour | undefined
  /**
   * The clock for answer delays and arrival times.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
  /**
   * How requests reach the service. `'http'`: a real HTTP server on 127.0.0.1. `'memory'`: no
   * server and no sockets; the demo client (createDemoClient) hands a `memory://` URL's request
   * to the service as a function call, and a reset or a hang behaves for the caller as it does
   * over HTTP. With a ManualClock a scenario then runs in virtual time, the same on every
   * machine: that is how the tests check each scenario's claim without timing anything real.
   * @default 'http'
   */
  readonly transport?: DemoTransport | undefined
}

/** How a demo client reaches a demo service; see {@link FaultyServiceOptions.transport}. */
export type DemoTransport = 'http' | 'memory'

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

/** The counters and behaviour every transport shares; a subclass delivers the reactions. */
abstract class FaultyServiceBase implements FaultyService {
  abstract readonly url: string
  protected readonly clock: Clock
  #behaviour: Behaviour
  #index = 0
  protected inFlight = 0
  #received = 0
  #ok = 0
  #errors = 0
  #resets = 0
  #hangs = 0
  #arrivalsMs: number[] = []

  constructor(behaviour: Behaviour, clock: Clock) {
    this.#behaviour = behaviour
    this.clock = clock
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

  abstract close(): Promise<void>

  /** Counts a request that arrived now and decides what to do with it. */
  protected react(): Reaction {
    const nowMs = this.clock.now()
    this.#received++
    this.#arrivalsMs.push(nowMs)
    const reaction = this.#behaviour({ index: this.#index++, nowMs, inFlight: this.inFlight })
    if (reaction.kind === 'reset') this.#resets++
    else if (reaction.kind === 'hang') this.#hangs++
    return reaction
  }

  /** Counts an answer that was delivered. */
  protected answered(status: number): void {
    if (status < 400) this.#ok++
    else this.#errors++
  }
}

class FaultyHttpService extends FaultyServiceBase {
  readonly url: string
  readonly #server: Server

  constructor(server: Server, url: string, behaviour: Behaviour, clock: Clock) {
    super(behaviour, clock)
    this.#server = server
    this.url = url
    server.on('request', (request: IncomingMessage, response: ServerResponse) => {
      this.#handle(request, response)
    })
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.#server.close(() => resolve())
      // Hanging requests would keep close() waiting for ever.
      this.#server.closeAllConnections()
    })
  }

  #handle(request: IncomingMessage, response: ServerResponse): void {
    const reaction = this.react()
    // Drain whatever body the client sent, so the connection stays usable.
    request.resume()
    switch (reaction.kind) {
      case 'reset':
        request.socket.resetAndDestroy()
        return
      case 'hang':
        this.inFlight++
        response.once('close', () => this.inFlight--)
        return
      case 'respond': {
        const delayMs = reaction.delayMs ?? 0
        if (delayMs <= 0) {
          this.#answer(response, reaction.status)
          return
        }
        this.inFlight++
        void sleep(this.clock, delayMs).then(() => {
          this.inFlight--
          // The client may have given up meanwhile; it then gets nothing.
          if (!response.destroyed) this.#answer(response, reaction.status)
        })
      }
    }
  }

  #answer(response: ServerResponse, status: number): void {
    this.answered(status)
    response.writeHead(status, { 'content-type': 'text/plain' })
    response.end(status < 400 ? 'ok' : 'failed')
  }
}

/** The `memory://` services open now, for the demo client (see {@link callInMemory}). */
const memoryServices = new Map<string, FaultyMemoryService>()
let nextMemoryId = 1

function connectionReset(): Error {
  return Object.assign(new Error('connection reset by the in-memory service'), {
    code: 'ECONNRESET',
  })
}

class FaultyMemoryService extends FaultyServiceBase {
  readonly url = `memory://faulty-${nextMemoryId++}`
  /** Calls left hanging or waiting for their answer: closing fails them, as a dropped socket. */
  readonly #open = new Set<(error: Error) => void>()

  constructor(behaviour: Behaviour, clock: Clock) {
    super(behaviour, clock)
    memoryServices.set(this.url, this)
  }

  async close(): Promise<void> {
    memoryServices.delete(this.url)
    for (const fail of [...this.#open]) fail(connectionReset())
  }

  /** One request, as the HTTP service treats it; resolves with the status it answered. */
  call(signal: AbortSignal | undefined): Promise<number> {
    // As undici: an aborted signal fails the call before anything is sent.
    if (signal?.aborted === true) return Promise.reject(signal.reason)
    const reaction = this.react()
    if (reaction.kind === 'reset') return Promise.reject(connectionReset())
    const delayMs = reaction.kind === 'respond' ? (reaction.delayMs ?? 0) : 0
    if (reaction.kind === 'respond' && delayMs <= 0) {
      this.answered(reaction.status)
      return Promise.resolve(reaction.status)
    }
    this.inFlight++
    return new Promise<number>((resolve, reject) => {
      let timer: TimerHandle | undefined
      const settle = (error: Error | undefined, status?: number): void => {
        if (!this.#open.delete(fail)) return
        this.inFlight--
        if (timer !== undefined) this.clock.clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        if (error !== undefined) reject(error)
        else resolve(status as number)
      }
      const fail = (error: Error): void => settle(error)
      // The caller gave up: over HTTP the socket closes and the late answer is never counted.
      const onAbort = (): void => settle(signal?.reason as Error)
      this.#open.add(fail)
      signal?.addEventListener('abort', onAbort, { once: true })
      if (reaction.kind === 'respond') {
        timer = this.clock.setTimeout(() => {
          this.answered(reaction.status)
          settle(undefined, reaction.status)
        }, delayMs)
      }
    })
  }
}

/**
 * The demo client's way to a `memory://` service: the status it answered, or undefined when
 * `url` is not one of the in-memory services open now.
 * @internal
 */
export function callInMemory(
  url: string,
  signal: AbortSignal | undefined,
): Promise<number> | undefined {
  return memoryServices.get(url)?.call(signal)
}

/**
 * Starts a service (an HTTP server on 127.0.0.1 and a random port, or with `transport:
 * 'memory'` one the demo client calls without sockets) that treats each request as its
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
  const clock = checkClock('faultyService.clock', options.clock)
  const transport = options.transport ?? 'http'
  if (transport !== 'http' && transport !== 'memory') {
    throw new InvalidOptionError('faultyService.transport', "'http' or 'memory'", transport)
  }
  if (transport === 'memory') return new FaultyMemoryService(behaviour, clock)
  const server = createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject)
      resolve()
    })
  })
  const { port } = server.address() as AddressInfo
  return new FaultyHttpService(server, `http://127.0.0.1:${port}`, behaviour, clock)
}
