// Types for scripts/lib/brokers.mjs, so TypeScript callers (test support, global setup,
// benchmarks) can import it.

/** The broker servers this module runs. */
export type BrokerName = 'nats' | 'redis' | 'rabbitmq'

/** What a started broker is, enough to stop it later (also from another process). */
export interface BrokerState {
  readonly service: BrokerName
  /** Connection URL for the adapters: nats://, redis:// or amqp://guest:guest@... */
  readonly url: string
  /** The client port on 127.0.0.1. */
  readonly port: number
  /** The temporary folder holding the server's data and log (server.log). */
  readonly root: string
  /** The server binary. */
  readonly bin: string
  /** Process (and process group) id of the running server; changes on restart(). */
  readonly pid: number
  readonly user: null
  /** RabbitMQ only: its private epmd's process id and port. */
  readonly epmdPid?: number
  readonly epmdPort?: number
  /** Redis or RabbitMQ started with `tls` only: the rediss:// or amqps:// URL of its TLS port. */
  readonly tlsUrl?: string
}

/** A running broker server. */
export interface StartedBroker extends BrokerState {
  /** Stops the process (SIGTERM: clean shutdown; SIGKILL: crash) and keeps its data. */
  kill(signal?: 'SIGTERM' | 'SIGKILL' | 'SIGINT'): Promise<void>
  /** Starts it again on the same port with the same data (stopping it first if it runs). */
  restart(): Promise<void>
  /** Stops it for good and deletes its folder. */
  stop(): Promise<void>
}

/** Options for starting a broker server. */
export interface StartBrokerOptions {
  /**
   * Stop the server and delete its folder when this process exits, also when it is killed
   * (a detached watchdog watches this pid). @default false
   */
  readonly stopOnExit?: boolean
  /** Stop the server when this process is gone (a detached watchdog checks every second). */
  readonly watchPid?: number
  /** Parent folder of the temporary data folder. @default os.tmpdir() */
  readonly tmpRoot?: string
  /** How long to wait for readiness. @default 20000 (RabbitMQ: 90000) */
  readonly timeoutMs?: number
  /** Receives progress lines (installation). */
  readonly log?: (line: string) => void
}

/** Options for {@link startNats}. */
export interface StartNatsOptions extends StartBrokerOptions {
  /**
   * NATS configuration text (e.g. an `authorization` block with users, passwords, a token or
   * permissions), written to nats.conf in the server's temporary folder and passed with `-c`.
   * The port, address, JetStream store and server name flags take precedence over it.
   */
  readonly config?: string
  /**
   * Start the server with JetStream (`-js`). `false` starts core NATS only, as a server
   * misconfigured without JetStream would run.
   * @default true
   */
  readonly jetstream?: boolean
}

export declare function startNats(options?: StartNatsOptions): Promise<StartedBroker>
/** A TLS listener's files (PEM): the server's certificate and key, and a client CA. */
export interface ServerTlsFiles {
  readonly certFile: string
  readonly keyFile: string
  /**
   * The CA a client certificate must be signed by: given, the server requires a client
   * certificate (mutual TLS). @default no client certificate is asked
   */
  readonly caFile?: string
}

/** Options for {@link startRedis}. */
export interface StartRedisOptions extends StartBrokerOptions {
  /**
   * Also listen with TLS on a second port, presenting this certificate and key. Its URL is
   * `tlsUrl`.
   */
  readonly tls?: ServerTlsFiles
}

/** Options for {@link startRabbitMq}. */
export interface StartRabbitMqOptions extends StartBrokerOptions {
  /** Also listen for AMQPS on a second port, presenting this certificate. Its URL is `tlsUrl`. */
  readonly tls?: ServerTlsFiles
}

export declare function startRedis(options?: StartRedisOptions): Promise<StartedBroker>
export declare function startRabbitMq(options?: StartRabbitMqOptions): Promise<StartedBroker>
export declare function startBroker(
  name: BrokerName,
  options?: StartBrokerOptions,
): Promise<StartedBroker>
/** Stops a server from its (possibly JSON round-tripped) state and deletes its folder. */
export declare function stopBroker(state: BrokerState, signal?: 'SIGTERM' | 'SIGKILL'): void
/** Path of `binary`, installing Debian package `pkg` when missing and running as root. */
export declare function ensureBinary(
  binary: string,
  pkg: string,
  options?: { readonly preferredDirs?: readonly string[]; readonly log?: (line: string) => void },
): string
