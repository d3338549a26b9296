package tfxnsl;

import java.util.Collections;
import java.util.List;
import org.apache.beam.sdk.util.construction.resources.PipelineResourcesDetector;

/**
 * Tells Beam's Flink and Spark job servers to stage no jars with a job: the
 * local clusters (tfx_nsl/engines.py) have the job server's jars on their
 * own classpath. Beam's default stages the job server's whole classpath
 * (160 MB) with every job, and every job then loads those classes anew.
 */
public class ClusterClasspath implements PipelineResourcesDetector.Factory {

  public static ClusterClasspath create() {
    return new ClusterClasspath();
  }

  @Override
  public PipelineResourcesDetector getPipelineResourcesDetector() {
    return new None();
  }

  /** Detects nothing to stage. */
  static class None implements PipelineResourcesDetector {
    @Override
    public List<String> detect(ClassLoader classLoader) {
      return Collections.emptyList();
    }
  }
}
