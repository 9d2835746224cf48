// In-memory fakes of node:cluster's Worker for the primary's IPC tests: they record what they
// are sent, and either accept every send or fail it the way Node does on a closing channel.
import { EventEmitter } from 'node:events'

/**
 * A Worker that records what it is sent; `closing` makes every send fail, `answering` answers
 * every command as done (as a worker whose runtime accepted it).
 */
export class FakeWorker extends EventEmitter {
  readonly id: number
  readonly process: { readonly pid: number; kill(signal: string): boolean }
  /** The signals sent to the worker's process, in order. */
  readonly signals: string[] = []
  #dead = false
  readonly sent: unknown[] = []
  readonly #closing: boolean
  readonly #answering: boolean

  readonly #refusing: ((command: { op: string }) => string | undefined) | undefined

  constructor(
    id: number,
    options: {
      readonly closing?: boolean
      readonly answering?: boolean
      /** With `answering`: the error a command is refused with (undefined: done). */
      readonly refusing?: (command: { op: string }) => string | undefined
    } = {},
  ) {
    super()
    this.id = id
    this.process = {
      pid: 1000 + id,
      kill: (signal) => {
        this.signals.push(signal)
        return true
      },
    }
    this.#closing = options.closing ?? false
    this.#answering = options.answering ?? false
    this.#refusing = options.refusing
  }

  /** The commands the worker was sent, in order. */
  commands(): unknown[] {
    return this.sent
      .filter(
        (m): m is { bw: 'request'; command: unknown } => (m as { bw?: string }).bw === 'request',
      )
      .map((m) => m.command)
  }

  /**
   * Plays a worker process starting as the CLI's does: asks the primary for the config in
   * force, then reports ready on the generation it was given (undefined: none was sent).
   */
  start(): number | undefined {
    this.emit('message', { bw: 'starting' })
    const given = this.sent.findLast((m) => (m as { bw?: string }).bw === 'config') as
      | { generation: number }
      | undefined
    this.emit('message', { bw: 'ready', generation: given?.generation })
    return given?.generation
  }

  /** Whether the process exited (see exit). */
  isDead(): boolean {
    return this.#dead
  }

  /** Plays the process exiting, as cluster reports it. */
  exit(code: number | null, signal: string | null): void {
    this.#dead = true
    this.emit('exit', code, signal)
  }

  /** Connected as far as it knows (a closing channel says so too). */
  isConnected(): boolean {
    return true
  }

  send(message: unknown, callback?: (error: Error | null) => void): boolean {
    this.sent.push(message)
    if (!this.#closing) {
      if (callback !== undefined) process.nextTick(callback, null)
      const request = message as { bw?: string; id?: number; command?: { op: string } }
      const refused = request.command === undefined ? undefined : this.#refusing?.(request.command)
      if (this.#answering && request.bw === 'request')
        process.nextTick(() =>
          this.emit(
            'message',
            refused === undefined
              ? { bw: 'reply', id: request.id, ok: true, value: null }
              : {
                  bw: 'reply',
                  id: request.id,
                  ok: false,
                  error: { code: 'INTERNAL_ERROR', message: refused },
                },
          ),
        )
      return true
    }
    const error = Object.assign(new Error('Channel closed'), { code: 'ERR_IPC_CHANNEL_CLOSED' })
    // As Node does: to the callback when there is one, else as an 'error' event (which throws
    // when nothing listens).
    if (callback !== undefined) process.nextTick(callback, error)
    else process.nextTick(() => this.emit('error', error))
    return false
  }
}
