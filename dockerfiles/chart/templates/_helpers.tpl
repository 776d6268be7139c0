{{/* The namespace every namespaced object goes to. */}}
{{- define "framework.namespace" -}}
{{- default .Release.Namespace .Values.namespace.name -}}
{{- end -}}

{{/* Labels on every object of the chart. */}}
{{- define "framework.labels" -}}
app.kubernetes.io/part-of: framework
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The training pods, as the launcher labels them (every backend). */}}
{{- define "framework.podSelector" -}}
app.kubernetes.io/name: framework
app.kubernetes.io/component: training
{{- end -}}

{{/*
The job kind (API group, resource) of each launcher backend: the same table as the launcher's client
(hydra_plugins.kubernetes_launcher._client); tests/unit/test_chart.py checks they agree.
*/}}
{{- define "framework.backendResources" -}}
indexed_job: [batch, jobs]
jobset: [jobset.x-k8s.io, jobsets]
pytorchjob: [kubeflow.org, pytorchjobs]
trainjob: [trainer.kubeflow.org, trainjobs]
rayjob: [ray.io, rayjobs]
{{- end -}}

{{/* The restricted container securityContext (Pod Security Standard "restricted"). */}}
{{- define "framework.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
