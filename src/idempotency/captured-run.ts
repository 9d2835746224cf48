import type { OutgoingHttpHeaders, ServerResponse } from 'node:http'
import type { Idempotency, IdempotentExecution } from './core.js'
import type { IdempotencyInProgressError } from './errors.js'
import { isLostLease, leaseLostAnswer } from './lease-lost.js'
import {
  abandonCapturedResponse,
  captureNodeResponse,
  earlierHeaders,
  writeInternalError,
  writeNodeResponse,
} from './node-response.js'
import { isIdempotencyError } from './problem.js'
import type { IdempotencyResponse } from './types.js'

/** How a {@link CapturedRun} answers besides the recorded response. */
export interface CapturedRunOptions {
  /** Called with a failure the client was answered 500 for, or one after the response. */
  readonly onError: (error: unknown) => void
  /**
   * Whether the lease-lost answer closes the connection. Express passes a stale handler's later
   * error to its error handling, whose default destroys the socket once headers were sent: the
   * connection must not have been reused for another request (the client's retry) by then.
   */
  readonly closeOnLeaseLost: boolean
  /**
   * Whether a response whose status or headers changed after its first `res.write` fails the
   * execution (see `CaptureOptions.fixedAtFirstWrite`): Express, whose error handling renders
   * a handler's error on the response the handler already started.
   * @default false
   */
  readonly fixedAtFirstWrite?: boolean
}

/**
 * One keyed request's handler on a node response (node:http's `idempotentHandler`, Express),
 * run with its response captured, then recorded and sent (or, if the handler fails before
 * ending the response, rolled back and answered with a problem; or, if its lease runs out
 * first, answered with the lease-lost 409). Callbacks rather than a race of promises, and a
 * class rather than closures: this is the path of every new key, and each promise (with its
 * async hooks) and closure shows in its cost.
 */
export class CapturedRun {
  readonly #idempotency: Idempotency
  readonly #execution: IdempotentExecution
  readonly #res: ServerResponse
  readonly #options: CapturedRunOptions
  #capture: { restore(): void } | undefined
  // What earlier layers had set on the response when the handler was about to run: sent again
  // with an answer that replaces the handler's response (its own headers are dropped).
  #earlier: OutgoingHttpHeaders | undefined
  #ended = false
  // Whether the client was answered because the lease ran out (see #leaseLost).
  #leaseLostAnswered = false

  constructor(
    idempotency: Idempotency,
    execution: IdempotentExecution,
    res: ServerResponse,
    options: CapturedRunOptions,
  ) {
    this.#idempotency = idempotency
    this.#execution = execution
    this.#res = res
    this.#options = options
  }

  /**
   * Captures the response, then calls `run`, which runs the handler (writing to the response).
   * A throw or a rejection before the response ends counts as the handler's failure.
   */
  start(run: () => void | Promise<void>): void {
    this.#earlier = earlierHeaders(this.#res)
    this.#capture = captureNodeResponse(
      this.#res,
      (response, unsupported) => this.#captured(response, unsupported),
      // Its fixedAtFirstWrite is the capture's option (no object made per request for it).
      this.#options,
    )
    this.#execution.onLeaseLost((error) => this.#leaseLost(error))
    // The lease ran out before the handler could even start: answered already.
    if (this.#ended) return
    let handled: void | Promise<void>
    try {
      handled = run()
    } catch (error) {
      this.#failed(error)
      return
    }
    if (handled !== undefined && typeof handled.then === 'function') {
      handled.then(undefined, (error: unknown) => this.#failed(error))
    }
  }

  // The handler ended its response: record it, then send what complete() returns (the response
  // itself, which holds the earlier layers' headers, or the lease-lost 409 in its place). The
  // store failing (the key is then released) rejects: nothing was sent yet. A response that
  // cannot be sent as recorded (trailers) is refused before the commit: once committed, a
  // failure to write it would answer 500 a result the retry replays. So is one no plain server
  // could have sent (status or headers changed after the body started, with fixedAtFirstWrite):
  // the handler failed after it started its body, answered as #failed answers a throw.
  #captured(response: IdempotencyResponse, unsupported: Error | undefined): void {
    this.#ended = true
    if (unsupported !== undefined) {
      this.#execution.abort().then(
        () => this.#internalError(unsupported),
        (abortError: unknown) => {
          this.#internalError(unsupported)
          this.#options.onError(abortError)
        },
      )
      return
    }
    this.#execution.complete(response).then(
      (final) => this.#send(final, final === response ? undefined : this.#earlier),
      (error: unknown) => this.#internalError(error),
    )
  }

  // The lease ran out before the handler ended its response: ctx.tx was rolled back, and the
  // response can no longer be recorded (a retry may take the key over now). The client is
  // answered now rather than left waiting for a handler that may never end. Not passed to
  // onError: the 'lease-lost' diagnostics event reports it, as for a handler that ends late.
  #leaseLost(error: IdempotencyInProgressError): void {
    if (this.#ended) return
    this.#ended = true
    this.#leaseLostAnswered = true
    leaseLostAnswer(this.#idempotency, this.#execution, error).then(
      (problem) =>
        abandonCapturedResponse(
          this.#res,
          this.#options.closeOnLeaseLost
            ? { ...problem, headers: { ...problem.headers, connection: 'close' } }
            : problem,
          this.#earlier,
        ),
      (abortError: unknown) => this.#internalError(abortError),
    )
  }

  // A handler may resolve before it ends the response (a stream still piping): only a
  // rejection (or a throw) before the end counts as failure; a later one is reported, unless
  // it is the lost lease the client was already answered with (ctx.tx refusing statements).
  #failed(error: unknown): void {
    if (this.#ended) {
      if (!this.#leaseLostAnswered || !isLostLease(error)) this.#options.onError(error)
      return
    }
    this.#ended = true
    this.#capture?.restore()
    this.#execution.abort().then(
      () => {
        if (isIdempotencyError(error)) {
          this.#send(this.#idempotency.problem(error), this.#earlier)
        } else this.#internalError(error)
      },
      // The key could not be released (it stays held until its lease ends): both failures are
      // reported, the handler's first.
      (abortError: unknown) => {
        this.#internalError(error)
        this.#options.onError(abortError)
      },
    )
  }

  #send(response: IdempotencyResponse, earlier: OutgoingHttpHeaders | undefined): void {
    try {
      writeNodeResponse(this.#res, response, earlier)
    } catch (error) {
      this.#internalError(error)
    }
  }

  // As for any other failure of the request: a 500 unless something was sent, and onError.
  #internalError(error: unknown): void {
    writeInternalError(this.#res, this.#earlier)
    this.#options.onError(error)
  }
}
