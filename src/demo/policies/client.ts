import { Agent, request } from 'undici'
import { BreakwaterError } from '../../core/errors.js'
import { isTransientStatus } from '../../policies/classify.js'
import { neverAbortedSignal } from '../../policies/types.js'
import { callInMemory } from './services.js'

/**
 * A demo service answered with a status of 400 or more (code `HTTP_STATUS`). `status` is what
 * the shared classifier reads: 503 is transient and retried, 500 or 404 is not.
 */
export class ServiceStatusError extends BreakwaterError {
  /** The HTTP status of the answer. */
  readonly status: number

  constructor(status: number, url: string) {
    super('HTTP_STATUS', `GET ${url} answered ${status}`, { retryable: isTransientStatus(status) })
    this.status = status
  }
}

/** The HTTP client the demo's callers share; see {@link createDemoClient}. */
export interface DemoClient {
  /**
   * Sends `GET url` and reads the whole answer. Resolves with the status below 400; rejects
   * with {@link ServiceStatusError} for 400 and above, with undici's error for a reset, and
   * as soon as `signal` aborts.
   */
  get(url: string, signal?: AbortSignal): Promise<number>
  /** Closes every connection. */
  close(): Promise<void>
}

/**
 * Creates a client on one undici `Agent` with no limit on connections per origin, so that
 * the only limits on concurrency in a scenario are the policies under test. A `memory://` URL
 * of a service made with `transport: 'memory'` is called without sockets.
 *
 * @example
 * ```ts
 * const client = createDemoClient()
 * await client.get('http://127.0.0.1:8080/')
 * await client.close()
 * ```
 */
export function createDemoClient(): DemoClient {
  // Keep-alive long enough to span a scenario; a reset connection is simply reopened.
  const agent = new Agent({ keepAliveTimeout: 10_000, connect: { timeout: 5_000 } })
  const overHttp = async (url: string, signal: AbortSignal | undefined): Promise<number> => {
    const { statusCode, body } = await request(url, {
      method: 'GET',
      dispatcher: agent,
      ...(signal === undefined ? {} : { signal }),
    })
    await body.dump()
    return statusCode
  }
  return {
    async get(url, signal) {
      // Policies hand out one shared never-aborting signal when nothing can abort; undici
      // would add a listener to it per request in flight and warn about a leak.
      const abortable = signal === neverAbortedSignal ? undefined : signal
      const status = (await callInMemory(url, abortable)) ?? (await overHttp(url, abortable))
      if (status >= 400) throw new ServiceStatusError(status, url)
      return status
    },
    close: () => agent.close(),
  }
}
