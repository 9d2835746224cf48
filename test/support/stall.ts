import { type Gate, gate } from './gate.js'

/**
 * A switch for a connection that hangs: while it is on, `passed()` waits; `resume()` lets every
 * waiter through. Wrapped drivers of the model tests call `passed()` before each statement.
 */
export class Stall {
  #gate: Gate | undefined

  /** True while new statements wait. */
  get on(): boolean {
    return this.#gate !== undefined
  }

  /** From now on, statements wait (until {@link Stall.resume}). */
  stall(): void {
    this.#gate ??= gate()
  }

  /** Lets the waiting statements, and later ones, through. */
  resume(): void {
    this.#gate?.open()
    this.#gate = undefined
  }

  /** Resolves once no stall is on (a stall that starts again meanwhile is waited out too). */
  async passed(): Promise<void> {
    while (this.#gate !== undefined) await this.#gate.promise
  }
}
