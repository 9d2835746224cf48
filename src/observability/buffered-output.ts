// Log lines gathered per event-loop turn and written together. A proxy writes an access line
// per request; on Linux a write to a pipe (how a supervisor or container runtime collects
// stdout) is a synchronous syscall, so one write per line cost about a third of the proxy's
// throughput. Gathered, a busy turn's lines go out in one write. A line waits at most until the
// end of the turn it was logged in (setImmediate), or less when `maxBytes` fill first.

import { InvalidOptionError } from '../core/errors.js'
import { checkInteger, checkObject, checkOptionKeys, optionKeys } from '../core/validate.js'
import type { LogOutput } from './logger.js'
import { writeSafely } from './safe-write.js'

/** Options of {@link createBufferedOutput}. */
export interface BufferedOutputOptions {
  /**
   * Bytes (UTF-16 code units, as written) held before they are written at once, without waiting
   * for the end of the turn.
   * @default 65536
   */
  readonly maxBytes?: number | undefined
  /**
   * Write the held lines when the process exits (a `process.on('exit')` listener), so a normal
   * exit or `process.exit()` loses nothing. Off for outputs whose lifetime is not the process's.
   * @default true
   */
  readonly flushOnExit?: boolean | undefined
}

/** The keys BufferedOutputOptions takes (internal: not exported from the package root). */
export const bufferedOutputOptions = optionKeys<BufferedOutputOptions>({
  maxBytes: true,
  flushOnExit: true,
})

/** A {@link LogOutput} that gathers lines; see {@link createBufferedOutput}. */
export interface BufferedOutput extends LogOutput {
  /** Writes every held line now. */
  flush(): void
  /** Flushes, then writes each later line straight through (and stops listening for exit). */
  close(): void
}

/**
 * Wraps `output` so that the lines written during one event-loop turn reach it in one write.
 * Lines keep their order. A crash (not a normal exit) loses the lines of the turn it happens in.
 * A `write` of `output` that throws never reaches the caller nor the end-of-turn timer: those
 * lines are dropped, and `output`'s first failure is reported once to `process.stderr`.
 *
 * An unknown (misspelt) option is refused with `InvalidOptionError` (`INVALID_OPTION`) naming it.
 *
 * @example
 * ```ts
 * const logger = createJsonLogger({ output: createBufferedOutput(process.stdout) })
 * ```
 */
export function createBufferedOutput(
  output: LogOutput,
  options: BufferedOutputOptions = {},
): BufferedOutput {
  checkObject('options', options)
  // A misspelt option was dropped without a word and its default used instead.
  checkOptionKeys('options', options, bufferedOutputOptions, { bareNames: true })
  if (typeof output !== 'object' || output === null || typeof output.write !== 'function') {
    throw new InvalidOptionError('output', 'an object with write()', output)
  }
  const maxBytes = checkInteger('maxBytes', options.maxBytes ?? 65_536, 1, 64 * 1024 * 1024)
  const flushOnExit = options.flushOnExit ?? true
  if (typeof flushOnExit !== 'boolean') {
    throw new InvalidOptionError('flushOnExit', 'a boolean', flushOnExit)
  }
  return new LineBuffer(output, maxBytes, flushOnExit)
}

class LineBuffer implements BufferedOutput {
  readonly #output: LogOutput
  readonly #maxBytes: number
  #held: string[] = []
  #bytes = 0
  #scheduled: NodeJS.Immediate | undefined
  #closed = false
  readonly #onExit: (() => void) | undefined

  constructor(output: LogOutput, maxBytes: number, flushOnExit: boolean) {
    this.#output = output
    this.#maxBytes = maxBytes
    if (flushOnExit) {
      this.#onExit = () => this.flush()
      process.on('exit', this.#onExit)
    }
  }

  write(text: string): boolean {
    if (this.#closed) {
      writeSafely(this.#output, text)
      return true
    }
    this.#held.push(text)
    this.#bytes += text.length
    if (this.#bytes >= this.#maxBytes) this.flush()
    // unref: a line waiting to be written must not keep an otherwise finished process alive
    // (the exit listener writes it).
    else this.#scheduled ??= setImmediate(() => this.flush()).unref()
    return true
  }

  flush(): void {
    if (this.#scheduled !== undefined) {
      clearImmediate(this.#scheduled)
      this.#scheduled = undefined
    }
    if (this.#held.length === 0) return
    const text = this.#held.length === 1 ? this.#held[0]! : this.#held.join('')
    this.#held = []
    this.#bytes = 0
    // Flushed from a timer or the exit listener too, where a throw would crash the process.
    writeSafely(this.#output, text)
  }

  close(): void {
    this.flush()
    this.#closed = true
    if (this.#onExit !== undefined) process.off('exit', this.#onExit)
  }
}
