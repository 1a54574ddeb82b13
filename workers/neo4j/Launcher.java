// An embedded Neo4j (community) serving Bolt on 127.0.0.1:PORT, started by workers/neo4j/server.py:
//
//   java -cp "$KEEL_HOME/neo4j/classes:$KEEL_HOME/neo4j/lib/*" Launcher PORT DATA_DIR
//
// Prints "READY bolt://127.0.0.1:PORT" on stdout once Bolt accepts connections; everything else
// goes to stderr. Auth is off unless NEO4J_LAUNCHER_PASSWORD is set (then user neo4j has that
// password). Stops cleanly on SIGTERM and when stdin closes, so a parent that dies, even by
// SIGKILL, never leaves it running: keep stdin open for as long as it should serve. The JVM
// options (heap, --add-opens for Neo4j's direct I/O) are JVM_OPTIONS in server.py.

import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.neo4j.configuration.GraphDatabaseInternalSettings;
import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.logging.Level;
import org.neo4j.logging.log4j.Log4jLogProvider;

public final class Launcher {
    private static final String HOST = "127.0.0.1";
    private static volatile DatabaseManagementService dbms;

    public static void main(String[] args) {
        if (args.length != 2) {
            System.err.println("usage: Launcher PORT DATA_DIR");
            System.exit(2);
        }
        int port = Integer.parseInt(args[0]);
        Path home = Path.of(args[1]).toAbsolutePath();
        String password = System.getenv("NEO4J_LAUNCHER_PASSWORD");

        // Watched from the start: the parent may die while the database is still starting.
        Thread stdinWatch = new Thread(Launcher::exitOnStdinEof, "stdin-eof");
        stdinWatch.setDaemon(true);
        stdinWatch.start();
        Runtime.getRuntime().addShutdownHook(new Thread(Launcher::shutdown, "neo4j-shutdown"));

        try {
            dbms = new DatabaseManagementServiceBuilder(home)
                    .setUserLogProvider(new Log4jLogProvider(System.err, Level.WARN))
                    .setConfig(BoltConnector.enabled, true)
                    .setConfig(BoltConnector.listen_address, new SocketAddress(HOST, port))
                    .setConfig(BoltConnector.advertised_address, new SocketAddress(HOST, port))
                    .setConfig(GraphDatabaseSettings.auth_enabled, password != null)
                    .setConfig(GraphDatabaseSettings.pagecache_memory, 64L << 20)
                    // Small local databases: no 256 MiB of preallocated tx logs; no phoning home.
                    .setConfig(GraphDatabaseSettings.preallocate_logical_logs, false)
                    .setConfig(GraphDatabaseSettings.udc_enabled, false)
                    // Netty's default 5 s quiet period, spent twice, made every stop take 10 s.
                    .setConfig(GraphDatabaseInternalSettings.netty_server_shutdown_quiet_period, 0)
                    .setConfig(
                            GraphDatabaseInternalSettings.netty_server_shutdown_timeout,
                            Duration.ofSeconds(2))
                    .build();
            if (password != null) {
                setPassword(password);
            }
        } catch (RuntimeException e) {
            e.printStackTrace();
            System.err.println("neo4j did not start: " + reason(e));
            System.exit(1);
        }
        System.out.println("READY bolt://" + HOST + ":" + port);
        System.out.flush();
        try {
            stdinWatch.join(); // serve until stdin closes (or SIGTERM runs the shutdown hook)
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    private static void setPassword(String password) {
        try {
            dbms.database(GraphDatabaseSettings.SYSTEM_DATABASE_NAME)
                    .executeTransactionally(
                            "ALTER USER neo4j SET PASSWORD $password CHANGE NOT REQUIRED",
                            Map.of("password", password));
        } catch (RuntimeException e) {
            // A kept data dir may have it already, and Neo4j refuses to "change" it to itself.
            if (!reason(e).contains("Old password and new password cannot be the same")) {
                throw e;
            }
        }
    }

    /** The root cause, after the nearest message that adds to it: outer ones only say that
     * startup failed, and many repeat their cause. */
    private static String reason(Throwable error) {
        List<String> messages = new ArrayList<>(); // root cause first
        for (Throwable cause = error; cause != null; cause = cause.getCause()) {
            messages.add(0, cause.getMessage() != null ? cause.getMessage() : cause.toString());
        }
        String root = messages.get(0);
        for (String outer : messages) {
            if (!outer.contains(root)) {
                return outer + ": " + root;
            }
        }
        return root;
    }

    private static void exitOnStdinEof() {
        byte[] buffer = new byte[256];
        try (InputStream in = System.in) {
            while (in.read(buffer) != -1) {
                // Nothing is read from stdin; it only tells us the parent is still alive.
            }
        } catch (IOException e) {
            // A broken stdin means the parent is gone, as EOF does.
        }
        System.exit(0);
    }

    private static void shutdown() {
        DatabaseManagementService running = dbms;
        if (running != null) {
            running.shutdown();
        }
    }
}
