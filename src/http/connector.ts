// The service pool's connector: undici's own (TCP, TLS, session cache, keep-alive), with the
// connect timeout on the service's clock instead of undici's. undici 7 schedules its connect
// timeout on its "fast timers" (lib/util/timers.js: setFastTimeout), which tick every 499 ms
// and fire a timer on the second tick after it was set at the earliest: 100 ms, 300 ms or
// 600 ms all failed after about 1,000 ms, 1,500 ms after about 2,000 ms. No option of undici
// makes that timer precise; its documented extension point is a custom `connect` function.

import type { Socket } from 'node:net'
import { buildConnector, errors } from 'undici'
import type { Clock, TimerHandle } from '../core/clock.js'

/**
 * An undici connector (the Pool's `connect` option) that fails a connect not done within
 * `timeoutMs` on `clock` (TLS handshake included: undici reports a TLS socket once secure)
 * with undici's own `ConnectTimeoutError` (`UND_ERR_CONNECT_TIMEOUT`, same message), and
 * destroys its socket. The timer is cleared as soon as the connect succeeds or fails.
 * `Infinity`: no timer, a connect may take as long as the kernel lets it. `options` are what
 * the Pool's `connect` option would otherwise carry (TLS material, `servername`,
 * `rejectUnauthorized`, ...), handed to undici's `buildConnector` as they are; their
 * `timeout`, if any, is overridden.
 */
export function clockedConnector(
  clock: Clock,
  timeoutMs: number,
  options: buildConnector.BuildOptions = {},
): buildConnector.connector {
  // undici's own timer off (0): this one replaces it.
  const connect = buildConnector({ ...options, timeout: 0 })
  if (timeoutMs === Number.POSITIVE_INFINITY) return connect
  return (options, callback) => {
    let settled = false
    let timer: TimerHandle | undefined
    // undici's connectors return the socket (its Client ignores it; the type says void).
    const socket = (
      connect as (
        options: buildConnector.Options,
        callback: buildConnector.Callback,
      ) => Socket | undefined
    )(options, (error, connected) => {
      if (settled) {
        // Connected after the timeout had failed it: nobody will use this socket.
        connected?.destroy()
        return
      }
      settled = true
      if (timer !== undefined) clock.clearTimeout(timer)
      timer = undefined
      if (error === null) callback(null, connected)
      else callback(error, null)
    })
    // A connector that reported at once has nothing left to time.
    if (settled) return socket
    timer = clock.setTimeout(() => {
      timer = undefined
      if (settled) return
      settled = true
      const error = new errors.ConnectTimeoutError(timeoutMessage(options, socket, timeoutMs))
      // Its 'error' event reaches the callback above, which has nothing more to do.
      socket?.destroy(error)
      callback(error, null)
    }, timeoutMs)
    return socket
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
