"""A local Neo4j server (community edition, from Maven Central jars) speaking Bolt."""
