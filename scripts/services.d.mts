// Types for scripts/services.mjs, so TypeScript callers (the test suite's global setup) can
// import it.

/** A failure to install, start or stop a service, with a message meant for a person. */
export declare class ServiceError extends Error {}

/** What a started service is, enough to stop it later (also from another process). */
export interface ServiceState {
  readonly service: string
  readonly url: string
  readonly port: number
  readonly root: string
  readonly bin: string
  readonly user: { readonly uid: number; readonly gid: number } | null
}

/** A running service. */
export interface StartedService extends ServiceState {
  /** Stops the server and deletes its folder. */
  stop(): Promise<void>
}

/** Options for starting a service. */
export interface StartOptions {
  /** Stop the service when this process exits without calling stop (checked every second). */
  readonly watchPid?: number
  /** Receives progress lines (installation). */
  readonly log?: (line: string) => void
  /** Parent folder of the temporary data folder. @default os.tmpdir() */
  readonly tmpRoot?: string
}

export declare const services: Record<
  string,
  {
    readonly env: string
    start(options?: StartOptions): Promise<StartedService>
    stop(state: ServiceState): void
  }
>

export declare function startService(name: string, options?: StartOptions): Promise<StartedService>
export declare function stopService(state: ServiceState): void
export declare function startPostgres(options?: StartOptions): Promise<StartedService>
export declare function stopPostgres(state: ServiceState): void
export declare function findPostgresBin(): string | undefined
