// The service pool's connector: undici's own (TCP, TLS, session cache, keep-alive), with the
// connect timeout on the service's clock instead of undici's. undici 7 schedules its connect
// timeout on its "fast timers" (lib/util/timers.js: setFastTimeout), which tick every 499 ms
// and fire a timer on the second tick after it was set at the earliest: 100 ms, 300 ms or
// 600 ms all failed after about 1,000 ms, 1,500 ms after about 2,000 ms. No option of undici
// makes that timer precise; its documented extension point is a custom `connect` function.

import type { Socket } from 'node:net'
import { buildConnector, errors } from 'undici'
import type { Clock, TimerHandle } from '../core/clock.js'

/** An undici connector with its connects' timer on a clock; see {@link clockedConnector}. */
export interface ClockedConnector {
  /** The connector itself, for the Pool's `connect` option. */
  readonly connect: buildConnector.connector
  /**
   * Ends every connect still under way: destroys its socket, clears its timer and fails it
   * with undici's `ClientClosedError` (`UND_ERR_CLOSED`). For the pool's close and destroy,
   * which do not end them: undici gives up on a connect only when it fails, so a connect that
   * hangs would keep the process alive until its timeout, or for good without one.
   */
  abort(): void
}

/**
 * An undici connector (its `connect` for the Pool's `connect` option) that fails a connect not
 * done within `timeoutMs` on `clock` (TLS handshake included: undici reports a TLS socket once
 * secure) with undici's own `ConnectTimeoutError` (`UND_ERR_CONNECT_TIMEOUT`, same message),
 * and destroys its socket. The timer is cleared as soon as the connect succeeds or fails.
 * `Infinity`: no timer, a connect may take as long as the kernel lets it. `abort()` ends the
 * connects still under way. `options` are what the Pool's `connect` option would otherwise
 * carry (TLS material, `servername`, `rejectUnauthorized`, ...), handed to undici's
 * `buildConnector` as they are; their `timeout`, if any, is overridden.
 */
export function clockedConnector(
  clock: Clock,
  timeoutMs: number,
  options: buildConnector.BuildOptions = {},
): ClockedConnector {
  // undici's own timer off (0): this one replaces it. undici's connectors return the socket
  // (its Client ignores it; the type says void).
  const connect = buildConnector({ ...options, timeout: 0 }) as (
    options: buildConnector.Options,
    callback: buildConnector.Callback,
  ) => Socket | undefined
  // How to fail each connect under way, for abort().
  const underWay = new Set<(error: Error) => void>()
  return {
    connect: (options, callback) => {
      let settled = false
      let timer: TimerHandle | undefined
      const settle = () => {
        settled = true
        underWay.delete(fail)
        if (timer !== undefined) clock.clearTimeout(timer)
        timer = undefined
      }
      const fail = (error: Error) => {
        if (settled) return
        settle()
        // Its 'error' event reaches the callback below, which has nothing more to do.
        socket?.destroy(error)
        callback(error, null)
      }
      const socket = connect(options, (error, connected) => {
        if (settled) {
          // Connected after the timeout or abort() had failed it: nobody will use this socket.
          connected?.destroy()
          return
        }
        settle()
        if (error === null) callback(null, connected)
        else callback(error, null)
      })
      // A connector that reported at once has nothing left to time or abort.
      if (settled) return socket
      underWay.add(fail)
      if (timeoutMs !== Number.POSITIVE_INFINITY)
        timer = clock.setTimeout(() => {
          timer = undefined
          fail(new errors.ConnectTimeoutError(timeoutMessage(options, socket, timeoutMs)))
        }, timeoutMs)
      return socket
    },
    abort() {
      for (const fail of [...underWay]) fail(new errors.ClientClosedError())
    },
  }
}

// undici's own wording (lib/core/util.js, onConnectTimeout), so logs and matchers written for
// its error keep working.
function timeoutMessage(
  options: buildConnector.Options,
  socket: Socket | undefined,
  timeoutMs: number,
): string {
  const attempted = (socket as { autoSelectFamilyAttemptedAddresses?: unknown } | undefined)
    ?.autoSelectFamilyAttemptedAddresses
  const port = options.port || (options.protocol === 'https:' ? 443 : 80)
  const where = Array.isArray(attempted)
    ? `attempted addresses: ${attempted.join(', ')}`
    : `attempted address: ${options.hostname}:${port}`
  return `Connect Timeout Error (${where}, timeout: ${timeoutMs}ms)`
}
